"""The prompt protocols of ``monai-cbo prompts-bench`` on a suite: the suite's cases (:func:`read_suite`), the
prompt each protocol takes from a target's label (:func:`protocol_prompt`), a case loaded with its embedding
cache (:func:`_load`), its score per target and protocol (:func:`_score`), and the summary over sets
(:func:`summarise`, :func:`objective`, :func:`summary_markdown`). The suite format and the protocols are described
in :mod:`monai_cbo.bench.prompting`."""

from __future__ import annotations

import hashlib
import json
import math
import time
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
from ..inferers.prompts import correction_click, prompts_from_mask
from ..metrics import dice_3d
from ..networks import SliceCache, class_prompts_of

__all__ = [
    "AUTOMATIC",
    "INTERACTIVE",
    "INTERACTIVE_CLICK",
    "INTERACTIVE_STARTS",
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
#: the interactive challenge protocol: a 3D box, then rounds of one simulated correction click each (where the
#: mask is most wrong, every earlier click kept); its rows are ``clicks0`` (the 3D box, timed) .. ``clicksK``,
#: scored beside the others and never part of the sweep's objective
INTERACTIVE = "interactive"
#: the same started by one foreground click instead of a 3D box (at the structure's deepest voxel, no box, no
#: slice range): rows ``fromclick0`` (the click alone) .. ``fromclickK``
INTERACTIVE_CLICK = "interactive_click"
#: the rows' protocol prefix of each interactive start, and what the start is
INTERACTIVE_STARTS = {"clicks": "a 3D box", "fromclick": "one foreground click"}


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
    inferer: SliceWiseInferer,
    loaded: _Loaded,
    protocols: Sequence[str],
    config: PropagationConfig,
    clicks: int = 5,
) -> list[dict]:
    rows = []
    for target, mask in loaded.masks.items():
        for protocol in protocols:
            if protocol in (INTERACTIVE, INTERACTIVE_CLICK):
                rows += _interactive(inferer, loaded, target, mask, config, clicks, protocol == INTERACTIVE_CLICK)
                continue
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
            rows.append(_row(loaded, target, protocol, pred, mask))
    return rows


def _row(loaded: _Loaded, target: str, protocol: str, pred: np.ndarray, mask: np.ndarray, **extra) -> dict:
    present = np.nonzero(mask.any(axis=(0, 1)))[0]
    first, last = int(present[0]), int(present[-1])
    predicted = np.nonzero(pred.any(axis=(0, 1)))[0]
    outside = [z for z in predicted if z < first or z > last]
    beyond = max([first - z if z < first else z - last for z in outside], default=0)
    return {
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
        **extra,
    }


def _interactive(
    inferer: SliceWiseInferer,
    loaded: _Loaded,
    target: str,
    mask: np.ndarray,
    config: PropagationConfig,
    clicks: int,
    click_start: bool = False,
) -> list[dict]:
    """The interactive protocol on one target: the 3D box (row ``clicks0``; with ``click_start``, one foreground
    click at the structure's deepest voxel instead, row ``fromclick0``), then ``clicks`` rounds, each adding
    :func:`~monai_cbo.inferers.prompts.correction_click` of the current mask (all earlier clicks kept) and
    segmenting the object again; each row has its round's seconds, the slices whose mask changed and the slices
    the round decoded (``slices_decoded``: a slice whose prompt did not change is not decoded again, the inferer's
    decode memo answers; its embedding is cached). A perfect mask gets no more clicks (its later rounds repeat it,
    taking no time). The first answer is timed with the slices' embeddings cached and no decode remembered: the
    decoder's work only, a stricter denominator for a round's time than the user's first answer, which also
    encodes. The model's own class masks (for a learned stop) are decoded once per slice for all rounds."""
    name = "fromclick" if click_start else "clicks"
    if click_start:
        start = correction_click(np.zeros_like(mask), mask)  # nothing predicted: the structure's deepest voxel
        point = np.asarray([start.point], dtype=np.float32)
        prompt = ObjectPrompt([KeyBox(start.slice, None)], points={start.slice: (point, np.ones(1, dtype=np.int64))})
    else:
        prompt = protocol_prompt(mask, "box3d")
    pred = np.zeros(mask.shape, dtype=bool)
    class_masks: dict = {}
    rows = []
    for k in range(clicks + 1):
        click = correction_click(pred, mask) if k else None
        if k and click is None:
            rows.append(_row(loaded, target, f"{name}{k}", pred, mask, seconds=0.0, slices_changed=0, slices_decoded=0))
            continue
        if click is not None:
            points, labels = prompt.points.get(click.slice, (np.zeros((0, 2)), np.zeros(0, dtype=np.int64)))
            prompt.points[click.slice] = (
                np.concatenate([points, np.asarray([click.point], dtype=np.float32)]),
                np.concatenate([labels, [click.label]]).astype(np.int64),
            )
        if k == 0 and inferer.decode_memo is not None:
            inferer.decode_memo.clear()  # the first answer decodes every slice it reaches (embeddings cached)
        decoded = inferer.decoded
        tick = time.perf_counter()
        results = propagate(inferer, loaded.volume, prompt, config, loaded.cache, class_masks)
        seconds = time.perf_counter() - tick
        prompt.previous = {z: res.low_res for z, res in results.items()}  # for config.click_mask_prompt
        new = np.zeros(mask.shape, dtype=bool)
        for z, res in results.items():
            new[..., z] = res.prob.numpy() > inferer.threshold
        changed = int((new != pred).any(axis=(0, 1)).sum()) if k else int(new.any(axis=(0, 1)).sum())
        pred = new
        extra = {"seconds": round(seconds, 3), "slices_changed": changed, "slices_decoded": inferer.decoded - decoded}
        rows.append(_row(loaded, target, f"{name}{k}", pred, mask, **extra))
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
            if sel[0].get("seconds") not in (None, ""):  # an interactive round (rows.csv: strings): time and reach
                out[set_name][protocol]["seconds"] = float(np.mean([float(r["seconds"]) for r in sel]))
                for key in ("slices_changed", "slices_decoded"):
                    if sel[0].get(key) not in (None, ""):
                        out[set_name][protocol][key] = float(np.mean([float(r[key]) for r in sel]))
                lower = [r["dice"] < b["dice"] - 1e-9 for r, b in zip(sel, _round0(mine, sel), strict=True)]
                out[set_name][protocol]["below_box"] = int(sum(lower))
    return out


def _round0(rows: list[dict], sel: list[dict]) -> list[dict]:
    """For each interactive row of ``sel``, the same target's round-0 row of the same start (the 3D box or the
    click it started from)."""
    prefix = _interactive_prefix(sel[0]["protocol"])
    start = {(r["case"], r["target"]): r for r in rows if r["protocol"] == f"{prefix}0"}
    return [start[(r["case"], r["target"])] for r in sel]


def _interactive_prefix(protocol: str) -> str | None:
    """The interactive start whose round ``protocol`` is (``clicks`` / ``fromclick``), or None."""
    for prefix in INTERACTIVE_STARTS:
        if protocol.startswith(prefix) and protocol[len(prefix) :].isdigit():
            return prefix
    return None


def _scored(protocol: str) -> bool:
    """Whether ``protocol`` is part of the sweep's objective: the propagated prompt protocols only."""
    return protocol not in ("per_slice", AUTOMATIC) and _interactive_prefix(protocol) is None


def objective(rows: list[dict]) -> float:
    """What the sweep maximises: the mean over sets of the mean over propagated protocols of the set's Dice ratio
    to per-slice boxes (every set counts the same, however many cases it has)."""
    summary = summarise(rows)
    scored = lambda per_set: [v["ratio"] for p, v in per_set.items() if _scored(p)]  # noqa: E731
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
    lines += _interactive_markdown(result)
    return "\n".join(lines) + "\n"


def _interactive_markdown(result: dict) -> list[str]:
    lines: list[str] = []
    for prefix, start in INTERACTIVE_STARTS.items():
        lines += _interactive_table(result, prefix, start)
    if lines:
        lines += [
            "",
            "AUC: the mean Dice over the rounds (round 0: the start alone). Slices changed / decoded: per correction "
            "round, slices whose mask changed / slices decoded again (the others' decodes are reused).",
        ]
    return lines


def _interactive_table(result: dict, prefix: str, start: str) -> list[str]:
    lines: list[str] = []
    for part, per_set in result["parts"].items():
        for set_name, per in per_set.items():
            rounds = sorted((p for p in per if _interactive_prefix(p) == prefix), key=lambda p: int(p[len(prefix) :]))
            if not rounds:
                continue
            if not lines:
                lines = [
                    "",
                    f"### interactive protocol ({start}, then one correction click per round)",
                    "",
                    "| part | set | " + " | ".join(f"{p[len(prefix) :]} clicks" for p in rounds) + " | AUC | round / "
                    "first answer time | slices changed per round | slices decoded per round | targets below the "
                    "start after the last |",
                    "|---|---|" + "---:|" * (len(rounds) + 5),
                ]
            dice = [per[p]["dice"] for p in rounds]
            first = per[rounds[0]]["seconds"]
            later = [per[p]["seconds"] for p in rounds[1:]]
            ratio = f"{np.mean(later) / first:.2f}" if later and first > 0 else "–"
            changed, decoded = (
                f"{np.mean([per[p][key] for p in rounds[1:]]):.1f}" if later and key in per[rounds[1]] else "–"
                for key in ("slices_changed", "slices_decoded")
            )
            last = per[rounds[-1]]
            lines.append(
                f"| {part} | {set_name} | "
                + " | ".join(f"{d:.3f}" for d in dice)
                + f" | {np.mean(dice):.3f} | {ratio} | {changed} | {decoded} | {last['below_box']} of {last['n']} |"
            )
    return lines
