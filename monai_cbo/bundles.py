"""The bundles shipped in this checkout, by name: what they segment, their trained adapter and its record.

A bundle is a model when it ships ``models/adapter.pt`` (adapter-only checkpoint with class prompts) and
``models/adapter.json`` (how it was trained and what it scores: the command, data, seed, steps, time, machine,
test Dice with and without prompts). ``monai-cbo segment --bundle NAME`` takes the adapter and the
preprocessing (``configs/inference.json``'s ``preprocess``) from it; ``monai-cbo bundles`` lists them.

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

from .inferers.volume import Preprocess

__all__ = [
    "BundleInfo",
    "bundle_auto_defaults",
    "bundle_command",
    "bundle_flags",
    "bundle_model",
    "bundle_preprocess",
    "bundle_propagation",
    "list_bundles",
    "load_bundle",
]

#: the shipped bundles, beside the package in a source checkout (``pip install -e .``)
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


@dataclass
class BundleInfo:
    """A shipped bundle: its folder, metadata, classes, and its adapter (None when it ships none)."""

    name: str
    path: Path
    metadata: dict[str, Any]
    class_names: list[str]
    adapter: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_path(self) -> Path:
        """Where the bundle's adapter is (or would be)."""
        return self.path / "models" / "adapter.pt"


def _bundle_dirs() -> list[Path]:
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


def load_bundle(name: str) -> BundleInfo:
    """The shipped bundle ``name``.

    Raises:
        FileNotFoundError: no bundles folder (not a source checkout) or no bundle of that name (the message
            lists the names there are).
    """
    names = [p.name for p in _bundle_dirs()]
    if not names:
        raise FileNotFoundError(
            f"no bundles found in {BUNDLES_DIR}: --bundle needs a source checkout of monai_cbo (pip install -e .)"
        )
    if name not in names:
        raise FileNotFoundError(f"no bundle named {name!r}; the bundles are {', '.join(names)} (monai-cbo bundles)")
    path = BUNDLES_DIR / name
    metadata = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
    train = json.loads((path / "configs" / "train.json").read_text(encoding="utf-8"))
    info = BundleInfo(name, path, metadata, list(train.get("class_names") or []))
    if info.adapter_path.exists():
        info.adapter = info.adapter_path
    record = path / "models" / "adapter.json"
    if record.is_file():
        info.record = json.loads(record.read_text(encoding="utf-8"))
    return info


def list_bundles() -> list[BundleInfo]:
    """Every shipped bundle, by name."""
    return [load_bundle(p.name) for p in _bundle_dirs()]


def _inference_config(info: BundleInfo) -> tuple[Path, dict]:
    """The bundle's ``configs/inference.json``: its path and its raw JSON (no MONAI parsing: plain values only)."""
    path = info.path / "configs" / "inference.json"
    return path, json.loads(path.read_text(encoding="utf-8"))


def bundle_preprocess(info: BundleInfo) -> Preprocess:
    """The bundle's inference preprocessing (``configs/inference.json``'s ``preprocess``), as it trains."""
    from monai.bundle import ConfigParser

    path, config = _inference_config(info)
    parser = ConfigParser()
    parser.read_config(config)
    pre = parser.get_parsed_content("preprocess")
    if not isinstance(pre, Preprocess):
        raise ValueError(f"{path}: 'preprocess' is not a Preprocess")
    return pre


def bundle_auto_defaults(info: BundleInfo) -> dict[str, bool | float]:
    """The bundle's automatic-mode defaults: ``configs/inference.json``'s plain ``largest_component`` and
    ``z_smooth`` values (an expression there counts as the library default)."""
    _, config = _inference_config(info)
    largest, smooth = config.get("largest_component", False), config.get("z_smooth", 0.0)
    return {
        "largest_component": largest if isinstance(largest, bool) else False,
        "z_smooth": float(smooth) if isinstance(smooth, (int, float)) and not isinstance(smooth, bool) else 0.0,
    }


def bundle_propagation(info: BundleInfo):
    """The bundle's propagation settings (:class:`~monai_cbo.inferers.PropagationConfig`): the plain values of
    ``configs/inference.json``'s ``propagation`` over the library defaults. A bundle whose shipped adapter had its
    settings swept (``monai-cbo prompts-bench --adapter ... --sweep``) records them there, so that ``monai-cbo
    segment --bundle`` and the label app propagate as its own inference does.

    Raises:
        ValueError: a setting there is not a propagation setting (the message names the file).
    """
    from .inferers import PropagationConfig

    path, config = _inference_config(info)
    node = config.get("propagation") or {}
    values = {
        k: v
        for k, v in node.items()
        if not k.startswith("_") and not (isinstance(v, str) and v.startswith(("$", "@", "%")))
    }
    try:
        return PropagationConfig().replace(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: 'propagation': {err}") from err


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
