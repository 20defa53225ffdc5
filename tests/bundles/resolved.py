"""What a bundle's configs resolve to, as plain JSON: the values its training, evaluation and inference use.

``tests/bundles/resolved_configs.json`` holds this for every shipped bundle, written before the task spec
(issue 32) moved those values into one ``task`` section; ``test_bundles.py`` compares the configs as they are
with it, so a change to how the configs are written cannot change what they do. Regenerate it (only for a
change meant to alter what a bundle does) with ``python tests/bundles/resolved.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("resolved_configs.json")
BUNDLES = ("spleen_ct_cbo", "organ_ct_cbo", "brats_mri_cbo", "hippocampus_mri_cbo")
#: what each config is asked for (ids that need data, a network or a GPU are left out, or pinned below)
IDS = {
    "train": [
        "model",
        "peft",
        "seed",
        "learning_rate",
        "weight_decay",
        "max_epochs",
        "val_interval",
        "batch_size",
        "slices_per_volume",
        "min_foreground",
        "box_jitter",
        "auto_share",
        "background_ratio",
        "channels",
        "network_def#class_names",
        "network_def#class_values",
        "network_def#exclusive",
        "load_volume",
        "sample_classes",
        "label_channels",
        "train#slice_transforms",
        "validate#mode",
        "validate#auto",
    ],
    "evaluate": [
        "network_def#class_names",
        "network_def#class_values",
        "network_def#exclusive",
        "load_volume",
        "label_channels",
        "validate#mode",
        "validate#auto",
        "validate#handlers#1#class_names",
        "validate#handlers#2#values",
        "auto_evaluator#val_handlers#1#class_names",
        "auto_evaluator#val_handlers#2#values",
    ],
    "inference": ["model", "preprocess", "propagation", "auto", "key", "overwrite"],
}
#: ids whose value moved (kind -> {id recorded: id or expression now}): the task spec holds the channels and
#: inference's preprocessing and propagation settings (issue 32)
MOVED = {
    "train": {"channels": "$@task.preprocess.channels"},
    "inference": {"preprocess": "task#preprocess", "propagation": "task#propagation"},
}
#: fields added since the record (type -> {field: the value the code used before the field existed}): a
#: resolved value holding exactly that is what was recorded without it
ADDED = {
    "Preprocess": {"mri_percentiles": [0.5, 99.5]},
    "PropagationConfig": {"click_boxes": False, "click_box_points": False, "click_mask_prompt": False},
    "SlicePromptsd": {"walk_key": None, "walk_margin": [0.1, 2.0], "walk_flag_key": None},
}
#: values pinned so that nothing is built or read: the model's input size, and the CPU
PINNED = {"img_size": 256, "device": "$torch.device('cpu')", "amp": False}
SKIPPED_TYPES = (np.random.RandomState, np.random.Generator, torch.Generator)


def describe(value: object, depth: int = 0) -> object:
    """``value`` as JSON: dataclasses and objects by their type and attributes (4 levels deep)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, (torch.device, torch.dtype, np.dtype, type)):
        return str(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    if isinstance(value, (list, tuple)):
        return [describe(v, depth) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, depth) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(describe(v, depth) for v in value)
    if depth >= 4:
        return type(value).__qualname__
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    else:
        fields = {k: v for k, v in vars(value).items() if not inspect.isroutine(v) and not isinstance(v, SKIPPED_TYPES)}
    return {"type": type(value).__qualname__, **{k: describe(v, depth + 1) for k, v in sorted(fields.items())}}


def without_added(value: object) -> object:
    """A :func:`describe` result without the :data:`ADDED` fields that hold their former implicit value, and without
    an MRI preprocessing's CT window (it acts on CT only; its default changed with the CT-window sweep)."""
    if isinstance(value, list):
        return [without_added(v) for v in value]
    if not isinstance(value, dict):
        return value
    added = ADDED.get(value.get("type"), {})
    if value.get("type") == "Preprocess" and value.get("modality") == "mri":
        added = {**added, "ct_window": value.get("ct_window")}
    return {k: without_added(v) for k, v in value.items() if not (k in added and v == added[k])}


def resolve(bundle: str) -> dict[str, dict[str, object]]:
    """Every id of :data:`IDS` of ``bundle``'s configs (evaluate over train, as MONAI merges them), looked up
    where it is now (:data:`MOVED`)."""
    configs = REPO / "bundles" / bundle / "configs"
    out: dict[str, dict[str, object]] = {}
    for kind, ids in IDS.items():
        files = ["train.json", "evaluate.json"] if kind == "evaluate" else [f"{kind}.json"]
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser.update({k: v for k, v in PINNED.items() if k in parser.config or k == "img_size"})
        for i, now in MOVED.get(kind, {}).items():
            parser[i] = now if now.startswith("$") else f"@{now}"
        out[kind] = {i: describe(parser.get_parsed_content(i)) for i in ids}
    return out


def resolve_all() -> dict[str, dict[str, dict[str, object]]]:
    return {bundle: resolve(bundle) for bundle in BUNDLES}


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(resolve_all(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)
