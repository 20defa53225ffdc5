"""Write every bundle's configs from one shared base: ``common/<kind>.json`` + ``common/tasks/<bundle>.json``.

The bundles train, evaluate and infer the same way; what differs per bundle is its task and a handful of values
(data and output folders, a learning rate). Those live in one small file per bundle under ``common/tasks/``: its
``task`` section (a :class:`monai_cbo.task.TaskSpec`: classes, label values, preprocessing, automatic and
propagation settings) is written once there and emitted as the ``task`` of every config that reads a task
(``train.json``, over which ``evaluate.json`` and ``multi_gpu_train.json`` merge, and ``inference.json``); the
other sections hold each config's own values (``train``, ``evaluate``, ``inference``, ``multi_gpu_train``). The
wiring lives once, in ``common/``. This script merges them the way MONAI merges a list of config files (a key
``a#b#0`` replaces one nested item, any other key a whole top-level item; ``"_remove_": [keys]`` drops base
items a task does not use) and writes ``bundles/<bundle>/configs/<kind>.json``.

The written configs stay complete, self-contained MONAI bundle configs: a bundle folder copied anywhere still
runs with ``python -m monai.bundle run training --config_file configs/train.json``, and users edit its values
there or on the command line as with any bundle. To change what several bundles share, edit ``common/`` and run::

    python bundles/build_configs.py            # rewrite the configs
    python bundles/build_configs.py --check    # exit 1 if a written config differs from its sources (CI runs this)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COMMON = ROOT / "common"
KINDS = ("train", "evaluate", "inference", "multi_gpu_train")
#: the configs that carry the bundle's task (the others are merged over train.json)
TASK_KINDS = ("train", "inference")
#: where a task's new top-level keys go in the written config: before this base key (the end if absent)
ANCHORS = {"train": "network_def", "inference": "device"}
WIDTH = 120


def _set_nested(config: dict, key: str, value: object, where: str) -> None:
    *parents, last = key.split("#")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            raise KeyError(f"{where}: {key!r} names {part!r}, which the base config does not have")
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def merge(base: dict, overrides: dict, anchor: str | None = None, where: str = "") -> dict:
    """``base`` with ``overrides`` applied (see the module docstring); ``base`` is not modified."""
    overrides = dict(overrides)
    removed = set(overrides.pop("_remove_", []))
    unknown = sorted(removed - set(base))
    if unknown:
        raise KeyError(f"{where}: _remove_ names {unknown}, which the base config does not have")
    top = {k: v for k, v in overrides.items() if "#" not in k}
    new = {k: v for k, v in top.items() if k not in base}
    out: dict = {}
    for key, value in base.items():
        if key == anchor:
            out.update(copy.deepcopy(new))
            new = {}
        if key not in removed:
            out[key] = copy.deepcopy(top.get(key, value))
    out.update(copy.deepcopy(new))
    for key, value in overrides.items():
        if "#" in key:
            _set_nested(out, key, copy.deepcopy(value), where)
    return out


def dumps(value: object, indent: int = 0, column: int | None = None) -> str:
    """JSON with 4-space indents; a container below the top level is written on one line when it fits within
    ``WIDTH`` characters from ``column`` (where it starts on its line; default ``indent``)."""
    flat = json.dumps(value, ensure_ascii=False)
    column = indent if column is None else column
    if not isinstance(value, (dict, list)) or not value or (indent > 0 and column + len(flat) + 1 <= WIDTH):
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, dict):
        body = []
        for k, v in value.items():
            key = json.dumps(k, ensure_ascii=False) + ": "
            body.append(pad + key + dumps(v, indent + 4, indent + 4 + len(key)))
        brackets = "{}"
    else:
        body, brackets = [pad + dumps(v, indent + 4) for v in value], "[]"
    return brackets[0] + "\n" + ",\n".join(body) + "\n" + " " * indent + brackets[1]


def build(bundle: str) -> dict[str, str]:
    """The text of each config of ``bundle`` (kind -> JSON text), from ``common/`` and its task file."""
    task_file = COMMON / "tasks" / f"{bundle}.json"
    task = json.loads(task_file.read_text(encoding="utf-8"))
    extra = sorted(set(task) - {"task", *KINDS})
    if extra:
        raise KeyError(f"{task_file}: sections {extra} are neither the task nor configs; use 'task' and {list(KINDS)}")
    texts = {}
    for kind in KINDS:
        base = json.loads((COMMON / f"{kind}.json").read_text(encoding="utf-8"))
        overrides = dict(task.get(kind, {}))
        if kind in TASK_KINDS and "task" in task:
            if "task" in overrides:
                raise KeyError(f"{task_file}: [{kind}] sets 'task'; write the task once, in the 'task' section")
            overrides["task"] = task["task"]
        merged = merge(base, overrides, ANCHORS.get(kind), where=f"{task_file} [{kind}]")
        texts[kind] = dumps(merged) + "\n"
    return texts


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
