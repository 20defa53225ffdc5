"""The sweep of ``monai-cbo prompts-bench --sweep`` that chose the propagation defaults: each setting that
changes a slice's prompt (:data:`TRAJECTORY_GRID`) is recorded once on the tune cases with the stop rules off
(:func:`_record`), every combination of the stop rules (:data:`STOP_GRID`) is scored by truncating the recordings
(:func:`_track_dice`), and :func:`_sweep` chooses the settings and writes ``sweep.csv`` / ``sweep.md``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..inferers import ObjectPrompt, PropagationConfig, SliceWiseInferer, propagate
from ..inferers.propagation import StopMeasures, mask_feature, matching_classes, stop_measures, stops
from ..networks import class_prompts_of
from .protocols import PROTOCOLS, SuiteCase, _load, _Loaded, protocol_prompt, summarise

__all__ = ["STOP_GRID", "TRAJECTORY_GRID", "record_stop_rules", "sweep_stop_rules"]

#: settings that change which prompt each slice gets: one recorded propagation per combination
TRAJECTORY_GRID: dict[str, list] = {
    "margin": [0.0, 0.05, 0.1, 0.15, 0.2],
    "min_margin": [0.0, 2.0],
}
#: then also recorded with the previous slice's logits as a mask prompt, for the best trajectory setting
MASK_PROMPT = True
#: stop rules: evaluated for every combination at once by truncating the recorded propagations
STOP_GRID: dict[str, list] = {
    "max_growth": [1.2, 1.5, 2.0, 1e9],
    "min_shrink": [0.0, 0.1, 0.3],
    "min_overlap": [0.0, 0.3, 0.5, 0.7],
    "min_iou": [0.0, 0.5, 0.7, 0.8],
    "min_confidence": [0.0, 0.7, 0.8, 0.9],
    "min_similarity": [-1.0, 0.5, 0.7, 0.8, 0.9],
    "max_key_area": [1.0, 1.5, 2.0, 3.0, 1e9],
    "min_class_overlap": [0.0, 0.3, 0.5, 0.7, 0.9],  # swept only for a model with class prompts
    "patience": [1, 2, 3],  # not a threshold: how many slices in a row must break the rules above
}
#: the protocols whose objects are open (judged by the plain rules) and z-ranged (by the ``range_`` rules): each
#: rule set is chosen on its own protocols, the settings that change a slice's prompt on all three
OPEN_PROTOCOLS = ("one_key", "three_keys")
RANGED_PROTOCOLS = ("box3d",)
#: every stop rule at its most lenient value: how a recording is made
RULES_OFF = {
    "max_growth": 1e9,
    "min_shrink": 0.0,
    "min_overlap": 0.0,
    "min_iou": 0.0,
    "min_confidence": 0.0,
    "min_similarity": -1.0,
    "max_key_area": 1e9,
    "min_class_overlap": 0.0,
    "patience": 1,
}
#: objectives this close to the best count as a tie, settled in favour of the most lenient stop rules
TIE = 1e-3
#: between keys only (three_keys), tried last with the chosen settings
NEIGHBOUR_WEIGHTS = [0.0, 0.5, 1.0]
#: how far past a target's true extent a recorded propagation may run; None: to the volume's ends, so that the
#: sweep sees the whole cost of a rule that does not stop (a cap of 8 slices hid part of it on the hippocampus)
RECORD_BEYOND: int | None = None


@dataclass
class _Direction:
    """The slices one recorded direction adds past the outermost key, in walking order: their stop measures
    (columns [n, 1], :meth:`~monai_cbo.inferers.propagation.StopMeasures.stack`) and their overlap with the
    target in pixels ([n])."""

    measures: StopMeasures
    inter: np.ndarray


@dataclass
class _Track:
    """One target's propagation with one protocol, recorded with every stop rule off: what each slice past the
    outermost keys would add, so that any stop rule can be scored by truncation."""

    set: str
    protocol: str
    ranged: bool
    fixed_inter: float  # overlap with the target over the slices always kept (keys and between keys)
    fixed_area: float
    target_area: float
    directions: list[_Direction]


def _record(
    inferer: SliceWiseInferer, loaded: _Loaded, mask: np.ndarray, protocol: str, config: PropagationConfig
) -> _Track:
    prompt = protocol_prompt(mask, protocol)
    present = np.nonzero(mask.any(axis=(0, 1)))[0]
    depth = mask.shape[-1]
    ranged = prompt.z_range is not None
    beyond = depth if RECORD_BEYOND is None else RECORD_BEYOND
    span = prompt.z_range or (max(0, int(present[0]) - beyond), min(depth - 1, int(present[-1]) + beyond))
    open_rules = config.replace(**_rules(RULES_OFF, ranged=False), **_rules(RULES_OFF, ranged=True))
    results = propagate(
        inferer, loaded.volume, ObjectPrompt(prompt.keys, span, prompt.points), open_rules, loaded.cache
    )
    thr = inferer.threshold
    masks = {z: r.prob.numpy() > thr for z, r in results.items()}
    lo, hi = prompt.keys[0].slice, prompt.keys[-1].slice
    fixed = [z for z in masks if lo <= z <= hi]

    def feature(z: int) -> torch.Tensor | None:
        return mask_feature(loaded.cache[z], results[z].low_res)

    def automatic(z: int) -> list[np.ndarray]:  # the model's own mask of each class, decoded once per slice
        if z not in loaded.auto:
            per_class = inferer.decode_classes(loaded.cache[z], tuple(mask.shape[:2]))
            loaded.auto[z] = [(r.prob > thr).numpy() for r in per_class]
        return loaded.auto[z]

    classes: set[int] = set()  # as propagate finds them: the classes matching the object on its key slices
    if class_prompts_of(inferer.model) is not None:
        for key in prompt.keys:
            classes |= matching_classes(automatic(key.slice), masks[key.slice])

    directions = []
    for key, step in ((prompt.keys[-1], 1), (prompt.keys[0], -1)):
        zs = []
        z = key.slice + step
        while z in masks:
            zs.append(z)
            z += step
        key_feature = feature(key.slice)
        measures = [
            stop_measures(
                results[z],
                results[before],
                thr,
                key.area,
                feature(z),
                key_feature,
                automatic(z) if classes else (),
                classes,
            )
            for z, before in zip(zs, [key.slice, *zs], strict=False)
        ]
        inter = np.array([(masks[z] & mask[..., z]).sum() for z in zs], dtype=np.float64)
        directions.append(_Direction(StopMeasures.stack(measures), inter))
    return _Track(
        loaded.case.set,
        protocol,
        ranged,
        float(sum((masks[z] & mask[..., z]).sum() for z in fixed)),
        float(sum(masks[z].sum() for z in fixed)),
        float(mask.sum()),
        directions,
    )


def _rules(combo: dict, ranged: bool) -> dict:
    """A stop-rule combination as :class:`PropagationConfig` settings for open or z-ranged objects."""
    return {("range_" if ranged else "") + name: value for name, value in combo.items()}


def _stop_grid(learned: bool = True) -> tuple[list[dict], SimpleNamespace]:
    """Every combination of :data:`STOP_GRID`, and the same as arrays ([1, combinations]) under both the plain
    and the ``range_`` names, so that :func:`stops` scores open and ranged recordings alike. Without ``learned``
    (a model with no class prompts, where the learned stop cannot fire) ``min_class_overlap`` stays 0."""
    values = {k: v if learned or k != "min_class_overlap" else [0.0] for k, v in STOP_GRID.items()}
    combos = [dict(zip(values, v, strict=True)) for v in product(*values.values())]
    arrays = {k: np.array([c[k] for c in combos])[None] for k in STOP_GRID}
    return combos, SimpleNamespace(**arrays, **{f"range_{k}": v for k, v in arrays.items()})


def _track_dice(track: _Track, grid: SimpleNamespace, min_area: int) -> np.ndarray:
    """3D Dice of ``track`` under every stop-rule combination of ``grid`` ([combinations])."""
    grid.min_area = min_area
    inter = np.full(grid.max_growth.shape[1], track.fixed_inter)
    area = np.full(grid.max_growth.shape[1], track.fixed_area)
    for d in track.directions:
        if len(d.inter) == 0:
            continue
        stop = stops(grid, d.measures, track.ranged)
        kept = _kept(stop, grid.range_patience if track.ranged else grid.patience)
        inter += np.concatenate([[0.0], np.cumsum(d.inter)])[kept]
        area += np.concatenate([[0.0], np.cumsum(d.measures.area[:, 0])])[kept]
    return 2 * inter / np.maximum(area + track.target_area, 1e-9)


def _kept(stop: np.ndarray, patience: np.ndarray) -> np.ndarray:
    """How many slices a direction keeps ([combinations]) from whether each of its ``n`` recorded slices breaks a
    rule (``stop`` [n, combinations]): up to the first run of ``patience`` slices in a row that break one, as
    :func:`~monai_cbo.inferers.propagation.propagate` walks. The walk's end counts as breaking (a run cut short
    by the volume's end, or by an empty mask, which ends the recording, is dropped too)."""
    n = stop.shape[0]
    longest = int(patience.max())
    padded = np.concatenate([stop, np.ones((longest - 1, stop.shape[1]), dtype=bool)])
    starts = np.zeros_like(stop)
    run = np.ones_like(stop)  # run[i]: slices i .. i + p - 1 all break a rule
    for p in range(1, longest + 1):
        run &= padded[p - 1 : p - 1 + n]
        starts |= run & (patience == p)
    return np.where(starts.any(axis=0), starts.argmax(axis=0), n)


def _ceiling_dice(track: _Track) -> float:
    """3D Dice of ``track`` with a perfect stop rule: each direction cut where the Dice is highest (the ceiling of
    any stop rule on this recording; what is left below it is lost inside the extent, not at its ends)."""
    inter, area = np.array([track.fixed_inter]), np.array([track.fixed_area])
    for d in track.directions:  # every pair of cuts: what each direction adds up to each of its slices
        inter = (inter[:, None] + np.concatenate([[0.0], np.cumsum(d.inter)])[None]).ravel()
        area = (area[:, None] + np.concatenate([[0.0], np.cumsum(d.measures.area[:, 0])])[None]).ravel()
    return float(np.max(2 * inter / np.maximum(area + track.target_area, 1e-9)))


def _objective(dice: dict[tuple[str, str], np.ndarray], reference: dict[str, float]) -> np.ndarray:
    """Mean over sets of the mean over protocols of the set's mean Dice over per-slice boxes' (see objective)."""
    per_set: dict[str, list[np.ndarray]] = {}
    for (set_name, _), values in dice.items():
        per_set.setdefault(set_name, []).append(values / reference[set_name])
    return np.mean([np.mean(v, axis=0) for v in per_set.values()], axis=0)


def _lenient_best(scores: np.ndarray, lenient: np.ndarray, tie: float = TIE) -> int:
    """The best combination, near-ties (within ``tie``) going to the most lenient stop rules: a rule that does not
    help on the tune part is not switched on, so that what the defaults do is what the tune data asked for."""
    rank = np.where(scores >= scores.max() - tie, -lenient + 1e-3 * scores, -np.inf)
    return int(np.argmax(rank))


def _sweep(
    inferer, tune: list[SuiteCase], start: PropagationConfig, cache_path, tag: str, out: Path, log, evaluate
) -> PropagationConfig:
    """Choose the propagation settings on the tune cases: every trajectory setting recorded once, every stop-rule
    combination scored by truncation, for open objects (one key box, three key boxes) and z-ranged ones (3D box)
    apart, the neighbour weight last; ``sweep.csv`` and ``sweep.md`` record it."""
    reference_rows = evaluate(start, tune, ["per_slice"])
    reference = {k: v["per_slice"]["dice"] for k, v in summarise(reference_rows).items()}
    combos, grid = _stop_grid(learned=class_prompts_of(inferer.model) is not None)
    trajectories = [
        {**dict(zip(TRAJECTORY_GRID, v, strict=True)), "mask_prompt": False} for v in product(*TRAJECTORY_GRID.values())
    ]
    per_protocol: list[dict[tuple[str, str], np.ndarray]] = []  # per trajectory: (set, protocol) -> mean Dice
    ceilings: list[dict[tuple[str, str], float]] = []  # per trajectory: the same with a perfect stop rule

    def record(setting: dict) -> None:
        log(f"sweep: recording {setting} ({len(per_protocol) + 1}/{len(trajectories) + int(MASK_PROMPT)})")
        dice: dict[tuple[str, str], list[np.ndarray]] = {}
        ceiling: dict[tuple[str, str], list[float]] = {}
        for case in tune:
            loaded = _load(case, cache_path, tag)
            inferer.decode_memo.clear()
            for target_mask in loaded.masks.values():
                for protocol in PROTOCOLS[1:]:
                    track = _record(inferer, loaded, target_mask, protocol, start.replace(**setting))
                    dice.setdefault((case.set, protocol), []).append(_track_dice(track, grid, start.min_area))
                    ceiling.setdefault((case.set, protocol), []).append(_ceiling_dice(track))
            loaded.cache.save()
        per_protocol.append({k: np.mean(v, axis=0) for k, v in dice.items()})
        ceilings.append({k: float(np.mean(v)) for k, v in ceiling.items()})

    def family(protocols: tuple[str, ...]) -> np.ndarray:
        """[trajectories, combinations]: the objective over ``protocols`` alone."""
        return np.stack(
            [_objective({k: v for k, v in p.items() if k[1] in protocols}, reference) for p in per_protocol]
        )

    def combined(open_scores: np.ndarray, ranged_scores: np.ndarray) -> np.ndarray:
        """The objective over all three protocols (each trajectory with its best combinations)."""
        n_open, n_ranged = len(OPEN_PROTOCOLS), len(RANGED_PROTOCOLS)
        return (n_open * open_scores + n_ranged * ranged_scores) / (n_open + n_ranged)

    for setting in trajectories:
        record(setting)
    if MASK_PROMPT:
        best = combined(family(OPEN_PROTOCOLS).max(axis=1), family(RANGED_PROTOCOLS).max(axis=1))
        trajectories.append({**trajectories[int(np.argmax(best))], "mask_prompt": True})
        record(trajectories[-1])
    open_scores, ranged_scores = family(OPEN_PROTOCOLS), family(RANGED_PROTOCOLS)
    overall = combined(open_scores.max(axis=1), ranged_scores.max(axis=1))
    t = int(np.argmax(overall))
    lenient = np.array([_strictness(combo) for combo in combos])
    c_open, c_ranged = _lenient_best(open_scores[t], lenient), _lenient_best(ranged_scores[t], lenient)
    chosen = start.replace(**trajectories[t], **_rules(combos[c_open], False), **_rules(combos[c_ranged], True))
    log(
        f"sweep: chose {trajectories[t]}; open objects {open_scores[t, c_open]:.4f} (best {open_scores.max():.4f}) "
        f"with {combos[c_open]}; 3D boxes {ranged_scores[t, c_ranged]:.4f} (best {ranged_scores.max():.4f}) "
        f"with {combos[c_ranged]}"
    )

    def matching(options: list[dict], chosen: dict, name: str, value, alone: bool) -> list[int]:
        """Indices of ``options`` where ``name`` is ``value``; with ``alone``, only those equal to ``chosen`` in
        every other setting."""
        return [
            i
            for i, o in enumerate(options)
            if o[name] == value and (not alone or all(o[k] == chosen[k] for k in o if k != name))
        ]

    rows = []

    def row(setting: str, value, alone: np.ndarray, best: np.ndarray) -> None:
        rows.append(
            {
                "setting": setting,
                "value": _fmt(value),
                "objective": round(float(alone.max()), 4) if alone.size else "",  # "": not recorded
                "best_with_this_value": round(float(best.max()), 4) if best.size else "",
            }
        )

    at_chosen = combined(open_scores[:, c_open], ranged_scores[:, c_ranged])
    for name, values in {**TRAJECTORY_GRID, "mask_prompt": [False, True]}.items():  # one at a time, all protocols
        for value in values:
            row(
                name,
                value,
                at_chosen[matching(trajectories, trajectories[t], name, value, True)],
                overall[matching(trajectories, trajectories[t], name, value, False)],
            )
    for prefix, scores, c in (("", open_scores, c_open), ("range_", ranged_scores, c_ranged)):
        for name, values in STOP_GRID.items():
            for value in values:
                row(
                    prefix + name,
                    value,
                    scores[t, matching(combos, combos[c], name, value, True)],
                    scores[:, matching(combos, combos[c], name, value, False)],
                )
    neighbour = []
    for weight in NEIGHBOUR_WEIGHTS:
        trial = chosen.replace(neighbour_weight=weight)
        result = summarise(reference_rows + evaluate(trial, tune, ["three_keys"]))
        neighbour.append(float(np.mean([v["three_keys"]["ratio"] for v in result.values()])))
        rows.append(
            {
                "setting": "neighbour_weight (three_keys ratio only)",
                "value": weight,
                "objective": round(neighbour[-1], 4),
                "best_with_this_value": "",
            }
        )
    chosen = chosen.replace(neighbour_weight=NEIGHBOUR_WEIGHTS[int(np.argmax(neighbour))])
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = []
    for title, scores in (("Open objects (one key box, three key boxes)", open_scores), ("3D boxes", ranged_scores)):
        lines += [
            f"{title}: the best combinations",
            "",
            "| rank | objective | " + " | ".join([*trajectories[0], *STOP_GRID]) + " |",
            "|---:|---:|" + "---:|" * (len(trajectories[0]) + len(STOP_GRID)),
        ]
        for rank, flat in enumerate(np.argsort(scores, axis=None)[::-1][:10], 1):
            ti, ci = np.unravel_index(int(flat), scores.shape)
            values = [*trajectories[ti].values(), *combos[ci].values()]
            lines.append(f"| {rank} | {scores[ti, ci]:.4f} | " + " | ".join(_fmt(v) for v in values) + " |")
        lines.append("")
    lines += [
        "Tune part, chosen settings against a perfect stop rule (each direction cut where the Dice is highest):",
        "Dice ratio to per-slice boxes, chosen / perfect.",
        "",
        "| set | " + " | ".join(PROTOCOLS[1:]) + " |",
        "|---|" + "---:|" * len(PROTOCOLS[1:]),
    ]
    for set_name in reference:
        cells = []
        for protocol in PROTOCOLS[1:]:
            c = c_open if protocol in OPEN_PROTOCOLS else c_ranged
            chosen_value = per_protocol[t][(set_name, protocol)][c] / reference[set_name]
            cells.append(f"{chosen_value:.2f} / {ceilings[t][(set_name, protocol)] / reference[set_name]:.2f}")
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chosen_dice = {  # what the chosen rules give one key box and the 3D box (the neighbour weight changes neither)
        k: v[[c_open] if k[1] in OPEN_PROTOCOLS else [c_ranged]]
        for k, v in per_protocol[t].items()
        if k[1] in ("one_key", "box3d")
    }
    (out / "sweep_predicted.json").write_text(
        json.dumps({"objective_one_key_and_box3d": float(_objective(chosen_dice, reference)[0])}), encoding="utf-8"
    )
    return chosen


def _strictness(combo: dict) -> float:
    """How strict a stop-rule combination is: per rule 0 (most lenient value of the grid) .. 1 (strictest)."""
    total = 0.0
    for name, value in combo.items():
        grid = STOP_GRID[name]
        index = grid.index(value) / max(1, len(grid) - 1)
        lenient_up = name in ("max_growth", "max_key_area", "patience")  # larger is more lenient
        total += 1 - index if lenient_up else index
    return total


def _fmt(value) -> str:
    return "off" if isinstance(value, float) and value >= 1e9 else str(value)


def record_stop_rules(
    inferer: SliceWiseInferer,
    volumes: list[tuple[str, torch.Tensor, list[np.ndarray]]],
    start: PropagationConfig,
    log=print,
) -> tuple[list[dict], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What every stop-rule combination of :data:`STOP_GRID` gives on ``volumes`` (name, volume ``[3, H, W, D]``,
    the targets' binary masks in the sliced view), ``start``'s trajectory settings kept: one recording per target
    and protocol (one key box, three key boxes, 3D box), scored by truncation.

    Returns the combinations; per family (``"open"``: one and three key boxes, ``"ranged"``: 3D box) the 3D Dice
    of each recording under each combination ``[recordings, combinations]``; and per family each recording's
    Dice with a perfect stop ``[recordings]``."""
    combos, grid = _stop_grid(learned=class_prompts_of(inferer.model) is not None)
    dice: dict[str, list[np.ndarray]] = {"open": [], "ranged": []}
    ceiling: dict[str, list[float]] = {"open": [], "ranged": []}
    for name, volume, masks in volumes:
        loaded = SimpleNamespace(case=SimpleNamespace(set=name), volume=volume, cache={}, auto={})
        for mask in masks:
            if not mask.any():
                continue
            for protocol in PROTOCOLS[1:]:
                track = _record(inferer, loaded, mask, protocol, start)
                family = "ranged" if protocol in RANGED_PROTOCOLS else "open"
                dice[family].append(_track_dice(track, grid, start.min_area))
                ceiling[family].append(_ceiling_dice(track))
        log(f"  stop sweep: {name} recorded ({len(masks)} target(s), {len(loaded.cache)} slices encoded)")
    if not dice["open"]:
        raise ValueError("the stop sweep found no target in its volumes")
    return (
        combos,
        {k: np.stack(v) for k, v in dice.items()},
        {k: np.asarray(v, dtype=np.float64) for k, v in ceiling.items()},
    )


def sweep_stop_rules(
    inferer: SliceWiseInferer,
    volumes: list[tuple[str, torch.Tensor, list[np.ndarray]]],
    start: PropagationConfig,
    log=print,
    tie: float = TIE,
) -> tuple[PropagationConfig, dict]:
    """One adapter's own stop (``monai-cbo adapt``): :func:`record_stop_rules` on ``volumes``, then for open
    objects (one key box, three key boxes) and 3D boxes apart the best combination, the most lenient of those
    within ``tie`` of it (:func:`_lenient_best`).

    Returns the chosen settings and what they give: mean 3D Dice per protocol family with the chosen rules, with
    every rule off (no stop but the volume's end, or the box's range) and with a perfect stop (the ceiling)."""
    combos, dice, ceiling = record_stop_rules(inferer, volumes, start, log)
    lenient = np.array([_strictness(combo) for combo in combos])
    off = int(np.argmin(lenient))  # every rule at its most lenient value
    chosen, report = start, {}
    for family, ranged in (("open", False), ("ranged", True)):
        scores = dice[family].mean(axis=0)
        best = _lenient_best(scores, lenient, tie)
        chosen = chosen.replace(**_rules(combos[best], ranged))
        report[family] = {
            "dice_chosen": round(float(scores[best]), 4),
            "dice_rules_off": round(float(scores[off]), 4),
            "dice_perfect_stop": round(float(ceiling[family].mean()), 4),
            "rules": dict(combos[best]),
            "targets": len(dice[family]) // (1 if ranged else len(OPEN_PROTOCOLS)),
        }
    return chosen, report
