"""The prompt protocols of ``monai-cbo prompts-bench`` on a suite: the suite's cases (:func:`read_suite`), the
prompt each protocol takes from a target's label (:func:`protocol_prompt`), a case loaded with its embedding
cache (:func:`_load`), its score per target and protocol (:func:`_score`), and the summary over sets
(:func:`summarise`, :func:`objective`, :func:`summary_markdown`). The suite format and the protocols are described
in :mod:`monai_cbo.bench.prompting`."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..inferers import (
    KeyBox,
    ObjectPrompt,
    Preprocess,
    Prompt2D,
    PropagationConfig,
    SliceWiseInferer,
    check_label,
    load_volume,
    mask_box,
    prepare_volume,
    propagate,
)
from ..inferers.prompts import prompts_from_mask
from ..metrics import dice_3d
from ..networks import SliceCache, class_prompts_of

__all__ = [
    "AUTOMATIC",
    "PROTOCOLS",
    "SuiteCase",
    "objective",
    "protocol_prompt",
    "read_suite",
    "summarise",
    "summary_markdown",
]

PROTOCOLS = ("per_slice", "one_key", "box3d", "three_keys")
#: no prompt at all: the model's class prompts on every slice (a model with class prompts only; raw masks, no
#: post-processing), scored beside the prompt protocols but never part of the sweep's objective
AUTOMATIC = "automatic"


@dataclass
class SuiteCase:
    set: str
    name: str
    image: str | list[str]
    label: str
    part: str
    modality: str
    targets: dict[str, list[int]]
    channels: list[int] | None = None
    ct_window: tuple[float, float] | None = None  # None: Preprocess's default

    @property
    def key(self) -> str:
        return f"{self.set}/{self.name}"


def read_suite(path: str | Path, data_root: str | Path) -> list[SuiteCase]:
    """The cases of a suite file, their paths resolved under ``data_root``."""
    path, root = Path(path), Path(data_root)
    suite = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(suite.get("sets"), dict) or not suite["sets"]:
        raise ValueError(f"suite {path} needs a non-empty 'sets' object (see monai_cbo.bench.prompting)")
    cases = []
    for set_name, spec in suite["sets"].items():
        for entry in spec["cases"]:
            if entry.get("part") not in ("tune", "validation"):
                raise ValueError(f"suite {path}, set {set_name}: each case needs 'part': 'tune' or 'validation'")
            image = entry["image"]
            image = [str(root / p) for p in image] if isinstance(image, list) else str(root / image)
            cases.append(
                SuiteCase(
                    set_name,
                    entry["case"],
                    image,
                    str(root / entry["label"]),
                    entry["part"],
                    spec.get("modality", "auto"),
                    {k: list(v) for k, v in spec["targets"].items()},
                    spec.get("channels"),
                    tuple(float(v) for v in spec["ct_window"]) if "ct_window" in spec else None,
                )
            )
    missing = [c.label for c in cases if not Path(c.label).exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} suite file(s) not found under {root}, e.g. {missing[0]}; give "
            "--data-root the folder the suite's paths are relative to (e.g. ../shared/data)"
        )
    return cases


def protocol_prompt(mask: np.ndarray, protocol: str) -> ObjectPrompt | dict[int, Prompt2D]:
    """The prompt a protocol takes from a target's binary mask ``[H, W, D]`` (sliced view)."""
    areas = mask.sum(axis=(0, 1))
    present = np.nonzero(areas)[0]
    if protocol == "per_slice":
        return prompts_from_mask(mask)
    first, last = int(present[0]), int(present[-1])

    def key(z: int) -> KeyBox:
        return KeyBox(z, mask_box(mask[..., z]))

    middle = int(present[np.argmin(np.abs(present - (first + last) / 2))])  # the present slice nearest the middle
    if protocol == "one_key":
        return ObjectPrompt([key(int(np.argmax(areas)))])
    if protocol == "box3d":
        return ObjectPrompt([key(middle)], z_range=(first, last))
    if protocol == "three_keys":
        return ObjectPrompt([key(z) for z in sorted({first, middle, last})])
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


@dataclass
class _Loaded:
    case: SuiteCase
    volume: torch.Tensor
    masks: dict[str, np.ndarray]  # target -> [H, W, D] bool, sliced view
    cache: SliceCache  # the slice embeddings, backed by a file under --cache-dir
    auto: dict[int, list[np.ndarray]] = field(default_factory=dict)  # slice -> the model's automatic class masks
    auto_labels: np.ndarray | None = None  # the automatic label map of the whole volume (protocol "automatic")


def _load(case: SuiteCase, cache_dir: Path | None, tag: str) -> _Loaded:
    image = load_volume(case.image)
    window = {} if case.ct_window is None else {"ct_window": case.ct_window}
    volume, geometry = prepare_volume(image, Preprocess(case.modality, channels=case.channels, **window))
    gt, _ = check_label(load_volume(case.label), image)
    sliced = geometry.to_sliced(gt)
    masks = {name: np.isin(sliced, values) for name, values in case.targets.items()}
    masks = {name: m for name, m in masks.items() if m.any()}
    file = None
    if cache_dir is not None:  # one file per image and model: slices encoded on demand, kept for the next run
        images = case.image if isinstance(case.image, list) else [case.image]
        channels = [] if case.channels is None else [str(case.channels)]
        channels += [] if case.ct_window is None else [f"window{list(case.ct_window)}"]  # other input, other key
        digest = hashlib.sha1("|".join([tag, case.modality, *channels, *map(str, images)]).encode())
        digest = digest.hexdigest()[:12]
        file = cache_dir / f"{case.name}__{digest}.pt"
    return _Loaded(case, volume, masks, SliceCache(None, path=file))


def _score(
    inferer: SliceWiseInferer, loaded: _Loaded, protocols: Sequence[str], config: PropagationConfig
) -> list[dict]:
    rows = []
    for target, mask in loaded.masks.items():
        present = np.nonzero(mask.any(axis=(0, 1)))[0]
        first, last = int(present[0]), int(present[-1])
        for protocol in protocols:
            if protocol == AUTOMATIC:
                pred = np.isin(_automatic_labels(inferer, loaded), loaded.case.targets[target])
            else:
                prompt = protocol_prompt(mask, protocol)
                if isinstance(prompt, ObjectPrompt):
                    results = propagate(inferer, loaded.volume, prompt, config, loaded.cache)
                else:
                    results = inferer.predict(loaded.volume, {1: prompt}, cache=loaded.cache)[1]
                pred = np.zeros(mask.shape, dtype=bool)
                for z, res in results.items():
                    pred[..., z] = res.prob.numpy() > inferer.threshold
            predicted = np.nonzero(pred.any(axis=(0, 1)))[0]
            outside = [z for z in predicted if z < first or z > last]
            beyond = max([first - z if z < first else z - last for z in outside], default=0)
            rows.append(
                {
                    "set": loaded.case.set,
                    "case": loaded.case.name,
                    "part": loaded.case.part,
                    "target": target,
                    "protocol": protocol,
                    "dice": dice_3d(pred, mask),
                    "true_slices": int(len(present)),
                    "predicted_slices": int(len(predicted)),
                    "slices_outside": len(outside),
                    "max_beyond": int(beyond),
                }
            )
    return rows


def _automatic_labels(inferer: SliceWiseInferer, loaded: _Loaded) -> np.ndarray:
    """The label map the model's class prompts give ``loaded``'s volume (every slice, decoded once per case)."""
    if loaded.auto_labels is None:
        prompts = class_prompts_of(inferer.model)
        if prompts is None:
            raise ValueError("the automatic protocol needs a model with class prompts (an adapter trained with them)")
        volume = loaded.volume
        size = tuple(volume.shape[1:3])
        results: dict[int, dict] = {int(v): {} for v in prompts.class_values}
        for z, emb in inferer.encode(volume, range(volume.shape[-1]), loaded.cache):
            for value, res in zip(prompts.class_values, inferer.decode_classes(emb, size), strict=True):
                results[int(value)][z] = res
        loaded.auto_labels = inferer.label_map(results, tuple(volume.shape[1:]), exclusive=prompts.exclusive)
    return loaded.auto_labels


def summarise(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per set and protocol: mean Dice, its ratio to per-slice boxes, slices outside the extent."""
    out: dict[str, dict[str, dict]] = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == set_name]
        ref = np.mean([r["dice"] for r in mine if r["protocol"] == "per_slice"])
        out[set_name] = {}
        for protocol in dict.fromkeys(r["protocol"] for r in mine):
            sel = [r for r in mine if r["protocol"] == protocol]
            dice = float(np.mean([r["dice"] for r in sel]))
            out[set_name][protocol] = {
                "n": len(sel),
                "dice": dice,
                "ratio": dice / ref if ref > 0 else math.nan,
                "slices_outside": int(sum(r["slices_outside"] for r in sel)),
                "max_beyond": int(max(r["max_beyond"] for r in sel)),
            }
    return out


def objective(rows: list[dict]) -> float:
    """What the sweep maximises: the mean over sets of the mean over propagated protocols of the set's Dice ratio
    to per-slice boxes (every set counts the same, however many cases it has)."""
    summary = summarise(rows)
    scored = lambda per_set: [v["ratio"] for p, v in per_set.items() if p not in ("per_slice", AUTOMATIC)]  # noqa: E731
    return float(np.mean([np.mean(scored(s)) for s in summary.values()]))


def summary_markdown(result: dict) -> str:
    lines = []
    for part, per_set in result["parts"].items():
        if not per_set:
            continue
        lines += [
            f"### {part} part",
            "",
            "| set | cases x targets | per-slice boxes Dice | one key box | 3D box | three key boxes | automatic |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for set_name, per in per_set.items():
            cells = []
            for protocol in (*PROTOCOLS[1:], AUTOMATIC):
                v = per.get(protocol)
                cells.append(
                    "–"
                    if v is None
                    else f"{v['dice']:.3f} ({v['ratio']:.2f}; {v['slices_outside']} out, ≤{v['max_beyond']})"
                )
            lines.append(
                f"| {set_name} | {per['per_slice']['n']} | {per['per_slice']['dice']:.3f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines.append(
        "Cells: mean 3D Dice (ratio to per-slice boxes; slices predicted outside the true extent, summed; the "
        "farthest one, in slices)."
    )
    return "\n".join(lines) + "\n"
