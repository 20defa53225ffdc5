"""What ``monai-cbo adapt`` does, start to end (:func:`adapt`): check and load, hold back, train, sweep the stop,
write the bundle; the budget's share for the stop sweep (:func:`_plan_stop_sweep`)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..bench.config import BenchConfig
from ..bench.data import BenchData, ClassKey, class_mask, foreground_slices
from ..inferers.automatic import AutoConfig
from ..inferers.propagation import PropagationConfig
from ..inferers.volume import Preprocess
from ..models import build_segmenter
from ..peft import save_adapter
from ..precision import resolve_precision
from ..utils import machine_summary
from .bundle import recipe_config, task_config, write_bundle
from .inputs import (
    InputProblems,
    LabelledCase,
    cases_from_datalist,
    check_and_load,
    has_regions,
    is_exclusive,
    pair_folders,
    values_of,
    written_values,
)
from .train import Budget, Recipe, split_validation, train_adapter

__all__ = ["adapt"]

#: seconds of a minutes budget kept for writing the bundle
WRITE_RESERVE = 5.0
STATE = Path(".adapt") / "state.pt"


def _check_out(out: Path, resume: bool) -> None:
    state = out / STATE
    if (out / "configs" / "metadata.json").exists():
        raise FileExistsError(f"{out} already holds a bundle; give -o a new folder (or delete that one)")
    if resume and not state.exists():
        raise FileNotFoundError(f"--resume: {out} holds no interrupted adapt run ({state} is missing)")
    if not resume and state.exists():
        raise FileExistsError(
            f"{out} holds an interrupted adapt run: add --resume to continue it, or give -o a new folder"
        )
    if not resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; give -o a new folder (nothing is overwritten)")


def _file_digest(path: Path) -> str:
    """The content hash of a file, or of every file under a folder (a DICOM series), by relative name."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        with open(f, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(cases: list[LabelledCase], **settings: object) -> str:
    """What a resumed run must share with the interrupted one: each case's name and its files' contents (not
    their paths or times: a dataset copied or moved elsewhere resumes; an edited label does not) and the
    settings."""
    parts = []
    for case in cases:
        files = list(case.image) if isinstance(case.image, tuple) else [case.image]
        parts += [f"{case.name}|{_file_digest(Path(f))}" for f in [*files, case.label]]
    parts.append(repr(sorted(settings.items())))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def adapt(
    images: str | Path,
    labels: str | Path | None,
    out: str | Path,
    *,
    class_names: Mapping[int, str] | None = None,
    preprocess: Preprocess | None = None,
    recipe: Recipe | None = None,
    budget: Budget | None = None,
    model: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    resume: bool = False,
    stop_sweep: bool = True,
    allow_few_slices: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
) -> Path:
    """Train an adapter on labelled volumes and write it as a user bundle in ``out``; return ``out``.

    Args:
        images: a folder of volumes (files or DICOM series folders), or a MONAI datalist JSON (then ``labels``
            is None and its ``training`` list is used).
        labels: a folder of label maps matched to ``images`` by case name.
        out: a new (or empty) folder for the bundle; with ``resume``, the folder of an interrupted run.
        class_names: label value -> name; default every value present, named by its number.
        preprocess: intensity scaling and slicing (default: modality decided from the volumes, CT window and
            axial slices as ``segment`` uses them).
        recipe, budget: how and how long to train (:class:`Recipe`, :class:`Budget`).
        model, checkpoint: the base model (LiteMedSAM by default; SAM ViT-B/L/H with their checkpoint file).
        stop_sweep: after training, choose the propagation's stop rules for this adapter on the volumes
            (:func:`_stop_sweep`); False keeps the library's defaults.
        allow_few_slices: train even when a class shows on fewer than :data:`MIN_FOREGROUND_SLICES` slices of
            the volumes (refused by default: see :func:`few_foreground_slices`).

    Raises:
        InputProblems: every problem with the inputs, before any training.
        FileExistsError: ``out`` holds something already (nothing is overwritten), or an interrupted run
            without ``resume``.
    """
    start = time.perf_counter()
    recipe, budget, preprocess = recipe or Recipe(), budget or Budget(), preprocess or Preprocess()
    out = Path(out)
    _check_out(out, resume)
    cases = cases_from_datalist(images) if labels is None else pair_folders(images, labels)
    loaded, classes, decided = check_and_load(cases, preprocess, class_names, log)
    fingerprint = _fingerprint(
        cases, classes=classes, preprocess=decided, recipe=recipe, budget=budget, model=model, checkpoint=checkpoint
    )
    state = None
    if resume:
        state = torch.load(out / STATE, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"--resume: {out}'s run was started on other volumes or settings (files, classes, recipe, budget or "
                "model differ); resume it with the same command, or start a new run in another folder"
            )
    train_cases, validation = split_validation(loaded, list(classes), recipe)
    few = few_foreground_slices(loaded, classes)
    if few and not allow_few_slices:
        raise InputProblems(few)
    for problem in few:
        log(f"warning: {problem}")
    note = (
        f"{len(validation.cases)} volume(s) held back ({', '.join(validation.cases)}), {len(validation.items)} slices"
        if validation.held_out == "volumes"
        else f"fewer than 4 volumes: a block of {len(validation.items)} slice(s) in all held back (one slice of "
        "margin each side), so validation is on slices of the training volumes, not on unseen volumes"
    )
    log(f"validation: {note}")
    config = BenchConfig(datalist="<adapt>", out=str(out), min_foreground=recipe.min_foreground, classes=list(classes))
    data = BenchData.from_cases(config, train_cases, [], dict(classes), validation.train_exclude, log)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    formats = {
        "training": resolve_precision(precision, device, training=True).label,
        "inference": resolve_precision(precision, device).label,
    }
    log(f"number format: training {formats['training']}, validation and stop sweep {formats['inference']}")
    auto = recipe.auto_share > 0
    net = build_segmenter(
        model,
        checkpoint,
        recipe.preset,
        recipe.rank,
        seed=recipe.seed,
        class_names=list(classes.values()) if auto else None,
        class_values=written_values(list(classes)) if auto else None,
        exclusive=is_exclusive(classes),
        walk_prompt=recipe.walk_prompt,
    ).to(device)
    sweep_plan, sweep_seconds = _plan_stop_sweep(
        net, loaded, validation.cases, len(classes), budget, device, precision, stop_sweep
    )
    seconds = None
    if budget.steps is None:
        seconds = budget.minutes * 60 - (time.perf_counter() - start) - WRITE_RESERVE - sweep_seconds
        if seconds < 10:
            raise ValueError(
                f"--minutes {budget.minutes:g} leaves {max(seconds, 0):.0f} s for training after loading the volumes "
                f"({time.perf_counter() - start:.0f} s); give more minutes"
            )
        log(
            f"training for {seconds / 60:.1f} min ({recipe.preset}, learning rate {recipe.learning_rate:g}; "
            f"{recipe.decoder_share:.0%} of the time in the decoder stage)"
            + (
                f"; {sweep_seconds / 60:.1f} min kept for the stop sweep on {len(sweep_plan)} volume(s)"
                if sweep_plan
                else ""
            )
        )
    else:
        log(
            f"training for {budget.steps} steps ({recipe.preset}, learning rate {recipe.learning_rate:g}), then "
            f"{budget.decoder_steps or 0} decoder-stage steps"
        )
    (out / STATE).parent.mkdir(parents=True, exist_ok=True)
    history = train_adapter(
        net,
        data,
        validation,
        recipe,
        budget,
        seconds,
        out / STATE,
        device,
        precision,
        resume=state,
        extra_state={"fingerprint": fingerprint},
        log=log,
    )
    propagation, stop_report = PropagationConfig(), None
    if sweep_plan:
        propagation, stop_report = _stop_sweep(net, sweep_plan, list(classes), device, precision, log)
        if budget.steps is None:  # how well the reserve was estimated, for the record
            stop_report["seconds_reserved"] = round(sweep_seconds, 1)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    adapter = save_adapter(
        net,
        out / "models" / "adapter.pt",
        overwrite=True,  # our own folder: an earlier attempt of this run may have left one
        metadata={"adapt": {"created": created, "steps": history["steps"], "seed": recipe.seed}},
    )
    best = history["best"] or {}
    record = {
        "trained_on": f"{len(loaded)} labelled volume(s) given to monai-cbo adapt, trained on "
        + ", ".join(c.name for c in train_cases)
        + (f"; held back for validation: {', '.join(validation.cases)}" if validation.held_out == "volumes" else ""),
        "training_cases": [c.name for c in train_cases],
        "command": command,
        "created": created,
        "seed": recipe.seed,
        "model": model,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "preset": recipe.preset,
        "classes": list(classes.values()),
        "recipe": dataclasses.asdict(recipe),
        "budget": dataclasses.asdict(budget),
        "steps": history["steps"],
        "decoder_steps": history["decoder_steps"],
        "training_seconds": history["seconds"],
        "stopped": history["stopped"],
        "validation": {
            "held_out": validation.held_out,
            "cases": validation.cases,
            "slices": len(validation.items),
            "note": note,
            "history": history["validations"],
        },
        "validation_dice": {k: {"mean": best[k]} for k in ("boxes", "automatic") if k in best},
        "propagation": stop_report or "the library's default stop settings (stop sweep off)",
        "loss": history["loss"],
        "precision": formats,
        "machine": machine_summary(device),
        "sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
    }
    if not has_regions(classes):
        labels = {str(k): n for k, n in classes.items()}
    else:  # regions: the label values as they are, the regions beside them (as a BraTS datalist has them)
        labels = {str(v): str(v) for v in sorted({v for k in classes for v in values_of(k)})}
    datalist = {
        "description": f"the volumes monai-cbo adapt trained on ({created})",
        "labels": {"0": "background", **labels},
        "training": [c.to_json() for c in cases if c.name in set(record["training_cases"])],
        "validation": [c.to_json() for c in cases if c.name in set(validation.cases)],
    }
    if has_regions(classes):
        datalist["regions"] = {n: list(values_of(k)) for k, n in classes.items()}
    task = task_config(classes, decided, AutoConfig(), propagation)
    train_values = {
        "model": {"name": model, "checkpoint": str(checkpoint) if checkpoint else None},
        "seed": recipe.seed,
        "recipe": recipe_config(recipe),
    }
    first = cases[0].image[0] if isinstance(cases[0].image, tuple) else cases[0].image
    images_dir = Path(images) if labels is not None else Path(first).parent  # inference's default input
    write_bundle(out, task, train_values, datalist, adapter, record, images_dir)
    shutil.rmtree(out / STATE.parent, ignore_errors=True)
    log(f"wrote the bundle {out} in {(time.perf_counter() - start) / 60:.1f} min ({history['stopped']})")
    return out


#: fewest slices (in the volumes, axial) a class must show on for adapt to train without --allow-few-slices. The
#: NRRD brain lesion shows on 5 (4 trained, 1 held back): its adapter segmented the other two lesions at 0.03
#: against zero-shot's 0.65 with a box on every slice; the spinal cord (11 to 16 slices) and every other
#: structure measured kept or lifted zero-shot's walks (docs/benchmarks/fewshot.md). A bound between those two
MIN_FOREGROUND_SLICES = 8


def few_foreground_slices(loaded: list, classes: Mapping[ClassKey, str]) -> list[str]:
    """A problem for each class that shows on fewer than :data:`MIN_FOREGROUND_SLICES` slices of ``loaded``'s
    label maps (sliced view), with the count and the fix; empty when every class has enough."""
    problems = []
    for key, name in classes.items():
        count = sum(len(foreground_slices(case.gt, [key], 1)) for case in loaded)
        if count < MIN_FOREGROUND_SLICES:
            problems.append(
                f"class {name} shows on {count} slice(s) of the {len(loaded)} volume(s), fewer than "
                f"{MIN_FOREGROUND_SLICES}: an adapter trained on so few overfits them (on a brain lesion shown on 5 "
                "slices, the adapter segmented unseen lesions at 0.03 Dice where zero-shot gave 0.65, "
                "docs/benchmarks/fewshot.md); label more volumes, or give --allow-few-slices to train anyway"
            )
    return problems


#: share of a minutes budget the stop sweep may take (volumes are added while their estimate fits)
SWEEP_SHARE = 0.3
#: the reserve for the stop sweep is its timed estimate times this: in six 10-minute hippocampus runs (4 volumes,
#: 2026-12-07) the estimate was 0.84-1.18 x what the sweep took, and the runs with it under 1 ended late (10.1-10.3
#: minutes of a 10-minute budget)
SWEEP_MARGIN = 1.2
#: the stop sweep's near-tie tolerance (3D Dice): the most lenient rules within it of the best are chosen. The
#: swept volumes are mostly ones the adapter trained on, where its masks are surer than on unseen ones, so rules
#: that fit them end walks early elsewhere. On unseen hippocampus volumes, with two 10-minute adapters, the
#: library sweep's 0.001 chose open-object rules (one and three key boxes) worth 0.682 and 0.714 there, 0.01 rules
#: worth 0.724 on both (within 0.006 of the best possible choice), the 3D box's unchanged
#: (docs/benchmarks/fewshot.md, stop_policy.py)
STOP_TIE = 0.01


def _plan_stop_sweep(
    net,
    loaded: list,
    held_back: list[str],
    targets: int,
    budget: Budget,
    device,
    precision: str,
    enabled: bool,
) -> tuple[list, float]:
    """The volumes the stop sweep records (held-back volumes first, then the smallest) and the seconds kept for it:
    each slice of a swept volume is encoded once and, for each of its ``targets`` (classes), decoded about once
    per recorded protocol (the walks); both timed here on one slice."""
    if not enabled:
        return [], 0.0
    from ..inferers.slicewise import SliceWiseInferer

    order = sorted(loaded, key=lambda c: (c.name not in held_back, c.gt.shape[-1]))
    if budget.steps is not None:  # no time budget: every volume, nothing to time
        return order, 0.0
    inferer = SliceWiseInferer(net.eval(), device=device, precision=precision)
    per_slice, per_decode = _sweep_unit_costs(inferer, loaded[0].volume)
    net.train()
    plan, total = [], 0.0
    for case in order:
        cost = sweep_seconds_estimate(case.gt.shape[-1], targets, per_slice, per_decode)
        if plan and total + cost > SWEEP_SHARE * budget.minutes * 60:
            break
        plan.append(case)
        total += cost
    return plan, total


def sweep_seconds_estimate(slices: int, targets: int, encode: float, decode: float) -> float:
    """The seconds kept for the stop sweep on ``slices`` slices with ``targets`` classes: each slice encoded once
    and, per target, decoded about once by each recorded protocol's walk, times :data:`SWEEP_MARGIN`."""
    from ..bench.propagation_sweep import OPEN_PROTOCOLS, RANGED_PROTOCOLS

    return SWEEP_MARGIN * slices * (encode + targets * (len(OPEN_PROTOCOLS) + len(RANGED_PROTOCOLS)) * decode)


def _sweep_unit_costs(inferer, volume) -> tuple[float, float]:
    """Seconds to encode one slice and to decode one box on it, each the faster of two calls after a first (which
    pays for allocation: 5-10 % more here). The decodes are timed apart: the reserve used to be 1.5 x the first
    encode, and was 1.8-2.3 x what the sweep took on five recorded 10-minute hippocampus runs. Encode plus the
    walks' timed decodes, timed inside the runs that then swept, was 0.84-1.18 x what their sweeps took (hence
    :data:`SWEEP_MARGIN`); timed afterwards in a process of its own (reserve_check.py) it came out higher, 1.6-1.8 x
    (docs/benchmarks/fewshot.md)."""
    from ..inferers.slicewise import Prompt2D

    middle = [volume.shape[-1] // 2]
    encodes, embedding = [], None
    for _ in range(3):
        tick = time.perf_counter()
        embedding = next(iter(inferer.encode(volume, middle)))[1]
        encodes.append(time.perf_counter() - tick)
    h, w = volume.shape[1:3]
    box = Prompt2D(box=np.array([w // 4, h // 4, 3 * w // 4, 3 * h // 4], dtype=np.float32))
    decodes = []
    for _ in range(3):
        tick = time.perf_counter()
        inferer.decode(embedding, [box], (h, w))
        decodes.append(time.perf_counter() - tick)
    return min(encodes[1:]), min(decodes[1:])


def _stop_sweep(
    net, plan: list, classes: list[ClassKey], device, precision: str, log
) -> tuple[PropagationConfig, dict]:
    from ..bench.propagation_sweep import sweep_stop_rules
    from ..inferers.slicewise import SliceWiseInferer

    tick = time.perf_counter()
    log(f"stop sweep: the propagation's stop rules for this adapter, on {len(plan)} volume(s)")
    inferer = SliceWiseInferer(net.eval(), device=device, precision=precision)
    volumes = [(c.name, c.volume, [class_mask(c.gt, k) for k in classes]) for c in plan]
    chosen, report = sweep_stop_rules(inferer, volumes, PropagationConfig(), log, tie=STOP_TIE)
    report.update(volumes=[c.name for c in plan], seconds=round(time.perf_counter() - tick, 1))
    log(f"  stop sweep took {report['seconds'] / 60:.1f} min")
    for family, title in (("open", "one / three key boxes"), ("ranged", "3D box")):
        r = report[family]
        log(
            f"  {title}: Dice {r['dice_chosen']:.3f} with the chosen stop, {r['dice_rules_off']:.3f} without, "
            f"{r['dice_perfect_stop']:.3f} with a perfect one"
        )
    return chosen, report
