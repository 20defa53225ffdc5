"""The bundles shipped in this checkout, by name: what they segment, their trained adapter and its record.

A bundle is a model when it ships ``models/adapter.pt`` (adapter-only checkpoint with class prompts) and
``models/adapter.json`` (how it was trained and what it scores: the command, data, seed, steps, time, machine,
test Dice with and without prompts). Its task (:class:`~monai_cbo.task.TaskSpec`: classes, preprocessing,
automatic and propagation settings) is ``configs/inference.json``'s ``task``, parsed by MONAI's
``ConfigParser`` as ``python -m monai.bundle run`` parses it. ``monai-cbo segment --bundle NAME`` and the label
app take the adapter and the task from it; ``monai-cbo bundles`` lists them.

Only bundles under this checkout's ``bundles/`` folder are loaded by name: their configs are evaluated (MONAI
configs hold code), so a name never reaches a file outside the project.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .task import TaskSpec

__all__ = [
    "WEAK_AUTOMATIC_DICE",
    "BundleInfo",
    "bundle_command",
    "bundle_flags",
    "bundle_model",
    "is_bundle_path",
    "list_bundles",
    "load_bundle",
    "read_task",
]

#: below this recorded automatic test Dice, a bundle's adapter is not trusted without a prompt (a warning says so)
WEAK_AUTOMATIC_DICE = 0.5
#: the shipped bundles, beside the package in a source checkout (``pip install -e .``)
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


@dataclass
class BundleInfo:
    """A shipped bundle: its folder, metadata, task, and its adapter (None when it ships none)."""

    name: str
    path: Path
    metadata: dict[str, Any]
    task: TaskSpec
    adapter: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.task.class_names)

    def weak_automatic(self) -> str | None:
        """Why this bundle's adapter should not run without a prompt (its record's automatic test Dice is below
        :data:`WEAK_AUTOMATIC_DICE`: a smoke model), or None."""
        mean = (self.record.get("test_dice") or {}).get("automatic", {}).get("mean")
        if mean is None or mean >= WEAK_AUTOMATIC_DICE:
            return None
        why = self.record.get("note") or "see its models/adapter.json"
        return f"{self.name}'s adapter scored automatic Dice {mean:.3f} on its test cases ({why})"

    @property
    def adapter_path(self) -> Path:
        """Where the bundle's adapter is (or would be)."""
        return self.path / "models" / "adapter.pt"


def _bundle_dirs() -> list[Path]:
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


def is_bundle_path(name: str | Path) -> bool:
    """Whether ``name`` names a bundle folder by its path (it holds a separator, or is ``.``/``..``) rather than
    a shipped bundle by name."""
    text = str(name)
    return "/" in text or "\\" in text or text in (".", "..") or Path(text).is_absolute()


def load_bundle(name: str | Path) -> BundleInfo:
    """The shipped bundle ``name``, or the bundle folder at path ``name`` (one written by ``monai-cbo adapt``,
    or a copied shipped one): a name with a path separator is a path (``./my_bundle``, ``runs/spleen``).

    A path is the user's own choice of code to run, as ``python -m monai.bundle run --config_file`` is: its configs
    are evaluated. Names from elsewhere (the network) must never reach here as paths.

    Raises:
        FileNotFoundError: no bundles folder (not a source checkout), no bundle of that name (the message
            lists the names there are), or a path that is not a bundle folder (the message says what it lacks).
    """
    if is_bundle_path(name):
        path = Path(name).expanduser().resolve()
        if not (path / "configs" / "metadata.json").is_file():
            raise FileNotFoundError(
                f"{name} is not a bundle folder: it has no configs/metadata.json (a bundle written by monai-cbo "
                "adapt, or one of bundles/, holds configs/ and models/)"
            )
        if not (path / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"bundle {name} has no configs/inference.json (its task is read from there)")
    else:
        names = [p.name for p in _bundle_dirs()]
        if not names:
            raise FileNotFoundError(
                f"no bundles found in {BUNDLES_DIR}: --bundle needs a source checkout of monai_cbo (pip install -e "
                ".) or a bundle folder's path (./NAME)"
            )
        if name not in names:
            raise FileNotFoundError(
                f"no bundle named {name!r}; the bundles are {', '.join(names)} (monai-cbo bundles), or give a "
                f"bundle folder's path (./{name})"
            )
        path = BUNDLES_DIR / str(name)
    metadata = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
    info = BundleInfo(path.name, path, metadata, read_task(path / "configs" / "inference.json"))
    if info.adapter_path.exists():
        info.adapter = info.adapter_path
    record = path / "models" / "adapter.json"
    if record.is_file():
        info.record = json.loads(record.read_text(encoding="utf-8"))
    return info


def read_task(config_file: str | Path) -> TaskSpec:
    """The ``task`` of a bundle config, parsed by MONAI's ``ConfigParser`` (expressions and references work).

    Raises:
        ValueError: the config has no ``task``, or it is not a task (the message names the file).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    if "task" not in parser.config:
        raise ValueError(
            f"{config_file} has no 'task' section (a monai_cbo.task.TaskSpec); see docs/design.md (the task spec)"
        )
    try:
        task = parser.get_parsed_content("task")
    except Exception as err:  # MONAI wraps a bad value's error in its own
        raise ValueError(f"{config_file}: 'task': {err}") from err
    if not isinstance(task, TaskSpec):
        raise ValueError(f"{config_file}: 'task' is a {type(task).__name__}, not a monai_cbo.task.TaskSpec")
    return task


def list_bundles() -> list[BundleInfo]:
    """Every shipped bundle, by name."""
    return [load_bundle(p.name) for p in _bundle_dirs()]


def bundle_model(info: BundleInfo, checkpoint: str | Path | None = None):
    """The bundle's trained segmenter (its adapter on the pretrained model).

    Raises:
        FileNotFoundError: the bundle ships no adapter (the message says how to train one, or to segment
            with prompts on the zero-shot model).
        ValueError: the adapter file is corrupt or not an adapter (the message names the file).
    """
    from .models import load_segmenter

    if info.adapter is None:
        reason = info.record.get("no_adapter_reason") or info.metadata.get("no_adapter_reason")
        raise FileNotFoundError(
            f"bundle {info.name} ships no trained adapter ({info.adapter_path} does not exist"
            + (f": {reason}" if reason else "")
            + f"); train one with python -m monai.bundle run training --config_file {info.path}/configs/train.json "
            "and pass --adapter, or segment with a prompt (--key-box, --prompts) on the zero-shot model"
        )
    return load_segmenter(info.adapter, checkpoint)


def bundle_command(configs: Path, config_files: Sequence[str], options: Sequence[str], workflow: str | None) -> list:
    """``python -m monai.bundle run [workflow] --config_file ...`` with ``options``, as a user would type it: the
    demo and the MONAI Label train task run the bundles this way."""
    files = [str(configs / f) for f in config_files]
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *([workflow] if workflow else []),
        "--config_file",
        config,
        *options,
    ]


def bundle_flags(**values: object) -> list[str]:
    """Bundle command-line overrides: ``--key value`` for each, ``preset`` as ``--peft#preset``."""
    out = []
    for key, value in values.items():
        out += [f"--{'peft#preset' if key == 'preset' else key}", str(value)]
    return out
