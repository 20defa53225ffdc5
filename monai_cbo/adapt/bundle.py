"""The user bundle ``monai-cbo adapt`` writes: the MONAI bundle layout of the shipped bundles (``configs/`` from
the same shared base, ``models/adapter.pt`` with its record ``models/adapter.json``, ``data/datalist.json``,
``docs/README.md``), so that ``segment --bundle PATH``, ``label --bundle PATH``, ``bundles PATH`` and
``python -m monai.bundle run --config_file PATH/configs/inference.json`` take it as they take a shipped one.

Every file is written whole or not at all (a temporary file renamed), ``configs/metadata.json`` last: a folder
without it is not a bundle, so an interrupted write never passes for a finished one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from ..bench.data import ClassKey
from ..bundle_configs import dumps, render
from ..inferers.automatic import AutoConfig
from ..inferers.propagation import PropagationConfig
from ..inferers.volume import Preprocess
from ..utils import write_atomic
from .inputs import class_key, has_regions, values_of, written_values
from .train import Recipe

__all__ = ["bundle_recipe", "from_bundle", "recipe_config", "task_config", "write_bundle"]


def _write(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def _target(obj: object, target: str, skip: tuple[str, ...] = ()) -> dict:
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(obj).items() if k not in skip}
    return {"_target_": target, **values}


def recipe_config(recipe: Recipe) -> dict:
    """The ``recipe`` section of a user bundle's ``train.json``: every value of ``recipe`` written out (the bundle
    says how its adapter was trained; ``train.json`` and ``monai-cbo adapt --bundle`` train with it again), the
    seed the config's own ``seed``."""
    return {**_target(recipe, "monai_cbo.adapt.Recipe", skip=("seed",)), "seed": "@seed"}


#: where a train.json written before the recipe moved into it keeps each of the recipe's values
_LEGACY_KEYS = {"preset": "peft#preset", "rank": "peft#rank"}


def bundle_recipe(path: str | Path) -> Recipe:
    """The recipe the bundle in folder ``path`` trains with: its ``configs/train.json``'s ``recipe`` (the library's
    :class:`Recipe` with the bundle's own values). A ``train.json`` written before it had one gives its literal
    values of the same names (``peft#preset``, ``learning_rate``, ...), the library's for the rest.

    Raises:
        ValueError: the ``recipe`` does not resolve to a :class:`Recipe` (the message names the file).
    """
    from monai.bundle import ConfigParser

    train = Path(path) / "configs" / "train.json"
    parser = ConfigParser()
    parser.read_config(str(train))
    if "recipe" in parser:
        try:
            recipe = parser.get_parsed_content("recipe")
        except Exception as err:  # MONAI wraps what the recipe's own check raised
            raise ValueError(f"{train}: its recipe does not resolve ({err}); fix the value it names") from err
        if not isinstance(recipe, Recipe):
            raise ValueError(f"{train}: 'recipe' is a {type(recipe).__name__}, not a monai_cbo.adapt.Recipe")
        return recipe
    values = {}
    for name in (f.name for f in dataclasses.fields(Recipe)):
        key = _LEGACY_KEYS.get(name, name)
        raw = parser[key] if key in parser else None
        if raw is not None and not (isinstance(raw, str) and raw[:1] in "$@%"):
            values[name] = raw
    return Recipe(**values)


def from_bundle(bundle: str | Path) -> tuple[Recipe, dict[ClassKey, str], Preprocess]:
    """What ``monai-cbo adapt --bundle`` (and the label server's train task) start from: a shipped bundle (by
    name) or a bundle folder's recipe (:func:`bundle_recipe`), classes (value, or label values of a region ->
    name) and preprocessing."""
    from ..bundles import load_bundle
    from ..transforms import BratsRegions

    info = load_bundle(str(bundle))
    task = info.task
    if task.regions is None:
        classes: dict[ClassKey, str] = {int(v): n for v, n in zip(task.classes, task.class_names, strict=True)}
    else:
        mapping = BratsRegions(task.regions).mapping
        classes = {class_key(values): name for name, values in zip(task.class_names, mapping.values(), strict=True)}
    return bundle_recipe(info.path), classes, task.preprocess


def task_config(
    classes: Mapping[ClassKey, str], preprocess: Preprocess, auto: AutoConfig, propagation: PropagationConfig
) -> dict:
    """The ``task`` section (a :class:`~monai_cbo.task.TaskSpec` in MONAI config form) of a user bundle: its
    ``classes`` (one label value each), or ``regions`` (classes covering several values, nested or not) with the
    value each is written with."""
    skip = ("ct_window",) if preprocess.modality != "ct" else ()
    if not has_regions(classes):
        labels: dict = {"classes": list(classes)}
    else:
        labels = {
            "regions": {n: list(values_of(k)) for k, n in classes.items()},
            "label_values": written_values(list(classes)),
        }
    return {
        "_target_": "monai_cbo.task.TaskSpec",
        "class_names": list(classes.values()),
        **labels,
        "preprocess": _target(preprocess, "monai_cbo.inferers.Preprocess", skip),
        "auto": _target(auto, "monai_cbo.inferers.AutoConfig"),
        "propagation": _target(propagation, "monai_cbo.inferers.PropagationConfig"),
    }


def _tensor_format(kind: str, fmt: str, dtype: str, value_range: list, channels: dict) -> dict:
    return {
        "type": kind,
        "format": fmt,
        "num_channels": 1,
        "spatial_shape": [-1, -1, -1],
        "dtype": dtype,
        "value_range": value_range,
        "is_patch_data": False,
        "channel_def": channels,
    }


def _metadata(name: str, classes: dict[int, str], modality: str, record: dict, regions: dict | None = None) -> dict:
    """``classes``: the value each class is written with -> its name; ``regions``: a region class's label values."""
    import monai
    import numpy
    import torch

    from .. import __version__

    labels = ", ".join(f"{v} {n}" for v, n in classes.items())
    given = ", ".join(f"{n} (labels {'+'.join(map(str, r))})" for n, r in regions.items()) if regions else labels
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"adapted by monai-cbo adapt on {record['created'][:10]}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"monai-cbo": __version__},
        "supported_apps": {},
        "name": name,
        "task": f"Prompted (box, key box, 3D box, points) or automatic segmentation of {labels} in "
        f"{modality.upper()}, slice by slice",
        "description": f"A SAM-family model ({record['model']}) with a {record['preset']} adapter trained by "
        f"monai-cbo adapt on {len(record['training_cases'])} labelled volume(s); see models/adapter.json.",
        "authors": "the user who ran monai-cbo adapt",
        "copyright": "the owner of the training data",
        "data_source": record["trained_on"],
        "data_type": "nibabel",
        "image_classes": "single channel " + ("CT, HU windowed" if modality == "ct" else "MRI, percentile scaled"),
        "label_classes": "0 background, " + given,
        "pred_classes": "0 background, " + labels,
        "intended_use": "Research only; not for clinical use",
        "network_data_format": {
            "inputs": {"image": _tensor_format("image", "magnitude", "float32", [], {"0": "image"})},
            "outputs": {"pred": _tensor_format("image", "labels", "uint8", [0, *classes], {"0": "labels"})},
        },
    }


def write_bundle(
    out: Path,
    task: dict,
    train_values: dict,
    datalist: dict,
    adapter: Path,
    record: dict,
    images: Path,
) -> Path:
    """Write the user bundle into ``out`` (which holds the trained ``adapter`` already, at
    ``models/adapter.pt``): configs, datalist, record, a README; ``configs/metadata.json`` last."""
    from ..bundles import BUNDLES_DIR

    common = BUNDLES_DIR / "common"
    if not common.is_dir():
        raise FileNotFoundError(
            f"the bundles' shared configs ({common}) are missing: monai-cbo adapt writes bundles from them and needs "
            "a source checkout of monai_cbo (pip install -e .)"
        )
    root = str(out.resolve())
    values = {
        "task": task,
        "train": {
            "bundle_root": root,
            "dataset_dir": "$@bundle_root + '/data'",
            "output_dir": "$@bundle_root + '/runs'",
            **train_values,
        },
        "evaluate": {"adapter": "$@bundle_root + '/models/adapter.pt'"},
        "inference": {
            "bundle_root": root,
            "input": str(images.resolve()),  # the folder of the training images: --input gives others
            "output_dir": "$@bundle_root + '/inference'",
            "adapter": "$@bundle_root + '/models/adapter.pt'",
            "model": train_values.get("model", {"name": "litemedsam", "checkpoint": None}),
        },
    }
    texts = render(common, values, where=f"user bundle {out}")
    _write(out / "data" / "datalist.json", dumps(datalist) + "\n")
    for kind, text in texts.items():
        _write(out / "configs" / f"{kind}.json", text)
    _write(out / "configs" / "logging.conf", (common / "logging.conf").read_text(encoding="utf-8"))
    _write(out / "models" / "adapter.json", json.dumps(record, indent=2) + "\n")
    _write(out / "docs" / "README.md", _readme(out, record))
    name = f"{', '.join(task['class_names'])} ({task['preprocess']['modality'].upper()}), adapted"
    classes = dict(zip(task.get("classes") or task["label_values"], task["class_names"], strict=True))
    _write(
        out / "configs" / "metadata.json",
        dumps(_metadata(name, classes, task["preprocess"]["modality"], record, task.get("regions"))) + "\n",
    )
    return out


def _readme(out: Path, record: dict) -> str:
    best = record.get("validation_dice") or {}
    scores = ", ".join(f"{mode} {d['mean']:.3f}" for mode, d in best.items()) or "none"
    return f"""# {", ".join(record["classes"])}: an adapter trained by monai-cbo adapt

Trained on {len(record["training_cases"])} labelled volume(s) ({record["created"]}) with

    {record["command"]}

Validation ({record["validation"]["held_out"]} held back: {record["validation"]["note"]}): {scores}.
How it was trained and scored: `models/adapter.json`.

Segment with it:

    monai-cbo segment IMAGE --bundle {out} -o masks/                 # automatic
    monai-cbo segment IMAGE --bundle {out} --key-box X0,Y0,X1,Y1 --key-slice Z -o masks/
    python -m monai.bundle run --config_file {out}/configs/inference.json --input IMAGES_FOLDER
    monai-cbo label --studies STUDIES --bundle {out}

Train it further, or again, on its data: `python -m monai.bundle run training --config_file {out}/configs/train.json`
(its datalist, `data/datalist.json`, names the volumes it was trained on).
"""
