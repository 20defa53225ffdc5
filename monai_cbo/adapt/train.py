"""The few-shot training of ``monai-cbo adapt``: a recipe (:class:`Recipe`), a budget of minutes or steps
(:class:`Budget`), validation on held-back volumes or slices (:func:`split_validation`, :func:`validate`), and the
loop (:func:`train_adapter`): the bundles' trainer and step (:func:`~monai_cbo.training.build_trainer`, the
bench's batches), the learning rate on a cosine over the budget's progress, checkpoints that a resumed run
continues from, the best validated weights kept, an early stop when validation stops improving.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..bench.config import BenchConfig
from ..bench.data import BenchData, LoadedCase, foreground_slices
from ..bench.run import format_eta, training_batches
from ..inferers.slicewise import Prompt2D, SliceWiseInferer, mask_box
from ..networks import SamSegmenter, class_prompts_of, feature_cache
from ..peft import adapter_state_dict
from ..training import build_optimizer, build_trainer
from ..utils import write_atomic

__all__ = ["Budget", "Recipe", "Validation", "split_validation", "train_adapter", "validate"]


@dataclass(frozen=True)
class Recipe:
    """How an adapter is trained from a few volumes (the defaults: docs/benchmarks/fewshot.md).

    Args:
        preset: the PEFT preset (``monai-cbo params``). Default ``adapter_cbo``, the shipped hippocampus adapter's.
        rank: LoRA rank / adapter width (default: the preset's).
        learning_rate: peak learning rate, on a cosine to 0 over the budget.
        batch_size: slices per step.
        box_jitter: pixels of random box jitter in box-prompted steps.
        min_foreground: pixels of a class for a slice to be sampled (and given a box).
        auto_share: share of steps that train the class prompts (automatic segmentation and the learned stop);
            0 trains box prompts only.
        background_ratio: in automatic steps, the chance that a slice is swapped for one without the structure.
        validations: validations over the budget (the last at its end); the best validated weights are kept.
        patience: validations without improvement after which training stops early (from half the budget on).
        val_slices: most slices holding the structure scored per validation (each costs an encoder pass); a held
            back volume adds the slice just past each end of the structure where automatic steps train.
        seed: model initialisation, slice order, jitter.
    """

    preset: str = "adapter_cbo"
    rank: int | None = None
    learning_rate: float = 3e-4
    batch_size: int = 2
    box_jitter: int = 5
    min_foreground: int = 4
    auto_share: float = 0.75
    background_ratio: float = 0.1
    validations: int = 4
    patience: int = 2
    val_slices: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.auto_share <= 1 or not 0 <= self.background_ratio <= 1:
            raise ValueError("auto_share and background_ratio are shares: 0 .. 1")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("batch_size", "validations", "patience", "val_slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Budget:
    """How long training runs: ``minutes`` of wall-clock time for the whole command (loading and validation
    included), or exactly ``steps`` steps (reproducible; ``minutes`` then is not used)."""

    minutes: float | None = 10.0
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is None and (self.minutes is None or not self.minutes > 0 or not math.isfinite(self.minutes)):
            raise ValueError(f"--minutes must be a positive number of minutes, got {self.minutes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


@dataclass
class Validation:
    """What validation scores: ``items`` (case, slice) with ``background`` ones among them (scored in automatic
    mode only), and how they were chosen (``held_out``: ``"volumes"`` or ``"slices"``, said in the record)."""

    items: list[tuple[LoadedCase, int]]
    held_out: str
    cases: list[str]
    #: (training case index, slice) kept out of training
    train_exclude: set[tuple[int, int]]


def _spread(items: list[int], count: int) -> list[int]:
    if len(items) <= count:
        return list(items)
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, count)]


def split_validation(
    cases: list[LoadedCase], classes: Sequence[int], recipe: Recipe
) -> tuple[list[LoadedCase], Validation]:
    """Hold back what validation scores: with 4 or more volumes, a quarter of them (at least one, drawn by the
    seed); with fewer, in each volume a block of consecutive slices holding the structure (a fifth of its
    extent, at least one slice, never its first or last slice where it can be avoided), kept out of training
    with one slice of margin on each side. Returns the training cases and the validation."""
    rng = np.random.default_rng([recipe.seed, 7])
    if len(cases) >= 4:
        count = max(1, len(cases) // 4)
        pick = sorted(rng.choice(len(cases), size=count, replace=False).tolist())
        held = [cases[i] for i in pick]
        train = [c for i, c in enumerate(cases) if i not in pick]
        per_case = max(1, recipe.val_slices // len(held))
        items: list[tuple[LoadedCase, int]] = []
        for case in held:
            fg = foreground_slices(case.gt, classes, recipe.min_foreground)
            chosen = _spread(fg, per_case)
            if fg and recipe.auto_share > 0:  # the slices just past each end: where a learned stop must say "absent"
                chosen += [z for z in (fg[0] - 1, fg[-1] + 1) if 0 <= z < case.gt.shape[-1]]
            items += [(case, z) for z in chosen]
        return train, Validation(items, "volumes", [c.name for c in held], set())
    items, exclude = [], set()
    per_case = max(1, recipe.val_slices // len(cases))
    for index, case in enumerate(cases):
        fg = foreground_slices(case.gt, classes, recipe.min_foreground)
        if len(fg) < 3:
            continue  # too thin to give up slices: it trains whole
        size = min(per_case, max(1, len(fg) // 5))
        first = int(rng.integers(1, max(2, len(fg) - size)))  # not the first slice; the block stays inside
        block = fg[first : first + size]
        items += [(case, z) for z in block]
        exclude |= {(index, z) for z in range(block[0] - 1, block[-1] + 2)}
    if not items:
        raise ValueError(
            "the labelled structure spans fewer than 3 slices in every volume: nothing can be held back to "
            "validate on; give more volumes (4 or more validate on whole volumes)"
        )
    return list(cases), Validation(items, "slices", [c.name for c in cases], exclude)


def validate(
    model: SamSegmenter, validation: Validation, classes: Sequence[int], device: torch.device, precision: str = "auto"
) -> dict[str, float]:
    """Pooled 2D Dice over the validation slices, mean over classes: ``boxes`` (a tight box per class on the
    slices holding it) and, for a model with class prompts, ``automatic`` (no prompt; background slices count
    their false positives); ``score`` is their mean (or ``boxes`` alone)."""
    was_training = model.training
    inferer = SliceWiseInferer(model, device=device, precision=precision)
    auto = class_prompts_of(model) is not None
    inter = {m: np.zeros(len(classes)) for m in ("boxes", "automatic")}
    total = {m: np.zeros(len(classes)) for m in ("boxes", "automatic")}
    by_case: dict[str, tuple[LoadedCase, list[int]]] = {}
    for case, z in validation.items:
        by_case.setdefault(case.name, (case, []))[1].append(z)
    for case, zs in by_case.values():
        size = tuple(case.volume.shape[1:3])
        for z, emb in inferer.encode(case.volume, sorted(set(zs))):
            truth = [case.gt[..., z] == c for c in classes]
            boxes = [(i, mask_box(t)) for i, t in enumerate(truth)]
            boxes = [(i, b) for i, b in boxes if b is not None]
            if boxes:
                results = inferer.decode(emb, [Prompt2D(box=b) for _, b in boxes], size)
                for (i, _), res in zip(boxes, results, strict=True):
                    pred = res.prob.numpy() > inferer.threshold
                    inter["boxes"][i] += 2 * np.logical_and(pred, truth[i]).sum()
                    total["boxes"][i] += pred.sum() + truth[i].sum()
            if auto:
                for i, res in enumerate(inferer.decode_classes(emb, size)):
                    pred = res.prob.numpy() > inferer.threshold
                    inter["automatic"][i] += 2 * np.logical_and(pred, truth[i]).sum()
                    total["automatic"][i] += pred.sum() + truth[i].sum()
    model.train(was_training)
    out = {}
    for mode in ("boxes", "automatic") if auto else ("boxes",):
        dice = np.where(total[mode] > 0, inter[mode] / np.maximum(total[mode], 1), 1.0)
        out[mode] = round(float(dice.mean()), 4)
    out["score"] = round(float(np.mean([out[m] for m in out])), 4)
    return out


def train_adapter(
    model: SamSegmenter,
    data: BenchData,
    validation: Validation,
    recipe: Recipe,
    budget: Budget,
    seconds: float | None,
    state_path: Path,
    device: torch.device,
    precision: str = "auto",
    resume: dict | None = None,
    cache_mib: float = 2048.0,
    extra_state: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model`` on ``data`` within ``budget`` (``seconds`` of training time when the budget is in minutes),
    validating ``recipe.validations`` times; keep the best validated weights in ``model``.

    A checkpoint (``state_path``, with ``extra_state`` added) is written at each validation and when interrupted
    (Ctrl-C): ``resume`` (its contents) continues that run: its weights, optimizer, step, time spent and best
    validation.

    Returns the run's history: steps, seconds, loss per step, each validation, the best one, why it stopped.
    """
    classes = list(data.classes)
    steps_cap = budget.steps if budget.steps is not None else 1_000_000
    config = BenchConfig(
        datalist="",
        out=str(state_path.parent),
        steps=steps_cap,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        box_jitter=recipe.box_jitter,
        min_foreground=recipe.min_foreground,
        auto_share=recipe.auto_share,
        background_ratio=recipe.background_ratio,
        precision=precision,
    )
    optimizer = build_optimizer(model, recipe.learning_rate)
    st = {
        "step": 0,
        "seconds": 0.0,
        "loss": [],
        "validations": [],
        "best": None,
        "best_state": None,
        "stopped": "",
        "pending": False,  # a validation was under way when the run was interrupted: a resumed run does it first
    }
    torch.manual_seed(recipe.seed)  # dropout draws: the same run gives the same adapter
    if resume is not None:
        st.update({k: resume[k] for k in st if k in resume})
        model.load_state_dict(resume["weights"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])  # dropout draws as the uninterrupted run's
        log(f"resuming at step {st['step']} after {format_eta(st['seconds'])} of training")
    if budget.steps is not None and st["step"] >= budget.steps or st["stopped"]:
        log("the checkpoint's run had already finished")
        return _finish(model, st)
    batches = training_batches(config, data, recipe.seed, model.img_size)
    for _ in range(st["step"]):  # the batches a resumed run has already trained on
        next(batches)
    model.train()
    trainer = build_trainer(
        model,
        optimizer,
        batches,
        device=device,
        precision=precision,
        epoch_length=steps_cap - st["step"],
        feature_cache=feature_cache(cache_mib),
        auto_share=recipe.auto_share if class_prompts_of(model) is not None else 0.0,
        seed=recipe.seed,
    )
    start, prior = time.perf_counter(), st["seconds"]
    marks = [(k + 1) / recipe.validations for k in range(recipe.validations)]
    last_log = [0.0]

    def progress() -> float:
        if budget.steps is not None:
            return st["step"] / budget.steps
        return st["seconds"] / seconds if seconds else 1.0

    def checkpoint() -> None:
        state = {
            **(extra_state or {}),
            **st,
            "weights": adapter_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        write_atomic(state_path, lambda tmp: torch.save(state, tmp), overwrite=True)

    def run_validation(engine: Engine | None) -> None:
        st["pending"] = True
        scores = validate(model, validation, classes, device, precision)
        st["pending"] = False
        st["seconds"] = prior + time.perf_counter() - start
        scores.update(step=st["step"], seconds=round(st["seconds"], 1))
        st["validations"].append(scores)
        better = st["best"] is None or scores["score"] > st["best"]["score"] + 1e-3
        if better:
            st["best"], st["best_state"] = scores, adapter_state_dict(model)
        parts = ", ".join(f"{k} {scores[k]:.3f}" for k in ("boxes", "automatic") if k in scores)
        log(f"  validation at step {st['step']}: {parts}{'  (best so far)' if better else ''}")
        recent = st["validations"][-recipe.patience - 1 :]
        if (
            engine is not None
            and progress() >= 0.5  # not while the learning rate is still high
            and len(st["validations"]) > recipe.patience
            and max(v["score"] for v in recent[1:]) <= recent[0]["score"] + 1e-3
            and st["best"]["step"] < st["step"]
        ):
            st["stopped"] = f"validation did not improve in {recipe.patience} validations"
            engine.terminate()
        checkpoint()

    @trainer.on(Events.ITERATION_STARTED)
    def _set_lr(engine: Engine) -> None:
        lr = recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress())))
        for group in optimizer.param_groups:
            group["lr"] = lr

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after_step(engine: Engine) -> None:
        before = progress()
        st["step"] += 1
        st["seconds"] = prior + time.perf_counter() - start
        st["loss"].append(round(engine.state.output["loss"].item(), 5))
        now = progress()
        if time.perf_counter() - last_log[0] > 20 or now >= 1:
            last_log[0] = time.perf_counter()
            rate = st["step"] * recipe.batch_size / max(st["seconds"], 1e-6)
            if budget.steps is not None:
                left = (budget.steps - st["step"]) * recipe.batch_size / max(rate, 1e-6)
            else:
                left = seconds - st["seconds"]
            log(
                f"  {min(now, 1):4.0%}  step {st['step']}  loss {np.mean(st['loss'][-10:]):.4f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {rate:.2f} slices/s  "
                f"trained {format_eta(st['seconds'])}  ETA {format_eta(left)}"
            )
        if now >= 1:
            st["stopped"] = "budget spent"
            engine.terminate()
        if any(before < m <= now for m in marks) or now >= 1:
            run_validation(engine)

    try:
        if st["pending"]:
            run_validation(None)
        trainer.run()
    except KeyboardInterrupt:
        st["seconds"] = prior + time.perf_counter() - start
        checkpoint()
        raise
    if not st["validations"] or st["validations"][-1]["step"] != st["step"]:
        run_validation(None)
    if not st["stopped"]:
        st["stopped"] = "budget spent"
    checkpoint()
    return _finish(model, st)


def _finish(model: SamSegmenter, st: dict) -> dict:
    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"], strict=False)
    return {
        "steps": st["step"],
        "seconds": round(st["seconds"], 1),
        "loss": st["loss"],
        "validations": st["validations"],
        "best": st["best"],
        "stopped": st["stopped"],
    }
