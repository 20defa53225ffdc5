"""Write every bundle's configs from one shared base: ``common/<kind>.json`` + ``common/tasks/<bundle>.json``.

The bundles train, evaluate and infer the same way; what differs per bundle is its task and a handful of values
(data and output folders, a learning rate). Those live in one small file per bundle under ``common/tasks/``: its
``task`` section (a :class:`monai_cbo.task.TaskSpec`: classes, label values, preprocessing, automatic and
propagation settings) is written once there and emitted as the ``task`` of every config that reads a task
(``train.json``, over which ``evaluate.json`` and ``multi_gpu_train.json`` merge, and ``inference.json``); the
other sections hold each config's own values (``train``, ``evaluate``, ``inference``, ``multi_gpu_train``). The
wiring lives once, in ``common/``. This script merges them the way MONAI merges a list of config files (a key
``a#b#0`` replaces one nested item, any other key a whole top-level item; ``"_remove_": [keys]`` drops base
items a task does not use; :func:`monai_cbo.bundle_configs.merge`, which ``monai-cbo adapt`` uses for the user
bundles it writes) and writes ``bundles/<bundle>/configs/<kind>.json``.

The written configs stay complete, self-contained MONAI bundle configs: a bundle folder copied anywhere still
runs with ``python -m monai.bundle run training --config_file configs/train.json``, and users edit its values
there or on the command line as with any bundle. To change what several bundles share, edit ``common/`` and run::

    python bundles/build_configs.py            # rewrite the configs
    python bundles/build_configs.py --check    # exit 1 if a written config differs from its sources (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monai_cbo.bundle_configs import render

ROOT = Path(__file__).resolve().parent
COMMON = ROOT / "common"


def build(bundle: str) -> dict[str, str]:
    """The text of each config of ``bundle`` (kind -> JSON text), from ``common/`` and its task file."""
    task_file = COMMON / "tasks" / f"{bundle}.json"
    return render(COMMON, json.loads(task_file.read_text(encoding="utf-8")), where=str(task_file))


def bundles() -> list[str]:
    return sorted(p.stem for p in (COMMON / "tasks").glob("*.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if any config is out of date")
    args = parser.parse_args(argv)
    stale = []
    for bundle in bundles():
        for kind, text in build(bundle).items():
            path = ROOT / bundle / "configs" / f"{kind}.json"
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
                print(f"wrote {path.relative_to(ROOT.parent)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT.parent)) for p in stale)
        print(
            f"out of date with bundles/common: {names}. Edit bundles/common/ (shared) or bundles/common/tasks/"
            "<bundle>.json (per bundle), then run: python bundles/build_configs.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
