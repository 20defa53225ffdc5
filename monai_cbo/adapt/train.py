"""The few-shot training of ``monai-cbo adapt``: a recipe (:class:`Recipe`), a budget of minutes or steps
(:class:`Budget`), validation on held-back volumes or slices (:func:`split_validation`, :func:`validate`), and the
loop (:func:`train_adapter`): the bundles' trainer and step (:func:`~monai_cbo.training.build_trainer`, the
bench's batches), the learning rate on a cosine over the budget's progress, checkpoints that a resumed run
continues from, the best validated weights kept, an early stop when validation stops improving.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..bench.config import BenchConfig
from ..bench.data import BenchData, ClassKey, LoadedCase, class_mask, foreground_slices
from ..bench.run import format_eta, frozen_encoder, training_batches
from ..inferers.slicewise import Prompt2D, SliceWiseInferer, mask_box
from ..networks import SamSegmenter, class_prompts_of, feature_cache
from ..training import Interaction, build_optimizer, build_trainer, record_interaction
from ..utils import write_atomic

__all__ = ["Budget", "Recipe", "Validation", "split_validation", "train_adapter", "validate"]


#: where a recipe's walk boxes apply (``Recipe.walk_stage``)
WALK_STAGES = ("both", "decoder")


@dataclass(frozen=True)
class Recipe:
    """How an adapter is trained from a few volumes (the defaults: docs/benchmarks/fewshot.md).

    Args:
        preset: the PEFT preset (``monai-cbo params``). Default ``adapter_cbo``, the shipped hippocampus adapter's.
        rank: LoRA rank / adapter width (default: the preset's).
        learning_rate: peak learning rate, on a cosine to 0 over the budget.
        cbo_lr_mult: the learning rate of CBO's relation tensors and quaternion heads, as a multiple of
            ``learning_rate``. METHOD.md's 100 (the presets' ``cbo_lr_mult``, which the bundles' train.json keeps)
            sits on the paper's base rate of 1.25e-6; on this recipe's 3e-4 it lowered one key box on the
            hippocampus at N = 4 (docs/benchmarks/fewshot.md), so adapt trains them at the base rate.
        batch_size: slices per step.
        box_jitter: pixels of random box jitter in box-prompted steps.
        walk_boxes: share of the box-prompted slices whose box is their neighbouring slice's, grown as a
            propagation grows it: the prompt each slice of a one-key-box walk gets (0: tight jittered boxes only).
            Off by default: on the hippocampus (N = 4, three seeds) 0.5 lifted one key box by 0.023-0.042 and
            lowered the box on every slice by 0.006-0.039 (docs/benchmarks/fewshot.md). Used by ``monai-cbo adapt``
            and the label server's train task; a bundle's train.json, whose transforms see one slice at a time,
            trains on the slice's own boxes.
        walk_prompt: with ``walk_boxes``, the walk boxes are flagged to the model, which learns an offset for them
            (:class:`~monai_cbo.networks.WalkPrompt`) and is given it on every slice a propagation walk prompts: a
            box the user draws keeps the meaning tight boxes taught it. Off by default: with walk boxes 0.5 on the
            hippocampus (N = 4, three seeds) it gave one key box 0.781 and a box on every slice 0.851 on the mean,
            between the recipe without walk boxes (0.764, 0.859) and walk boxes alone (0.799, 0.841), and three key
            boxes lower (docs/benchmarks/fewshot.md).
        walk_stage: where ``walk_boxes`` apply: ``"both"`` stages, or the ``"decoder"`` stage only (the whole
            adapter trained on tight boxes, the decoder then taught the walk's). On the hippocampus (N = 4, one
            seed) ``"decoder"`` traded as walk boxes in both stages do: one key box +0.104, a box on every slice
            -0.022 (docs/benchmarks/fewshot.md).
        min_foreground: pixels of a class for a slice to be sampled (and given a box).
        auto_share: share of steps that train the class prompts (automatic segmentation and the learned stop);
            0 trains box prompts only.
        background_ratio: in automatic steps, the chance that a slice is swapped for one without the structure.
        validations: validations over the budget (the last at its end); the best validated weights are kept.
        patience: validations without improvement after which the whole-adapter stage stops early (from half its
            budget on). The decoder stage runs its budget out (keeping its best validated weights): its steps are
            cheap, the first part of its time is the pass that encodes its slices (so early validations see few
            steps), and on the hippocampus it kept improving over 1500 steps (docs/benchmarks/fewshot.md).
        val_slices: most slices holding the structure scored per validation (each costs an encoder pass); a held
            back volume adds the slice just past each end of the structure where automatic steps train.
        decoder_share: share of a minutes budget's training time for the decoder stage (the encoder frozen, each
            slice's embedding cached, steps at the decoder's cost); in a steps budget: ``Budget.decoder_steps``.
        decoder_slices: most training slices the decoder stage trains on (None: all): a seeded sample of this many
            (spread over the volumes as the slices are), plus a quarter as many without the structure for its
            automatic steps. Its first pass encodes each slice it draws, a cost that grows with the volumes (8
            hippocampus volumes: 180 slices in a 2-minute stage that trained 162 steps, against 105 slices and
            about 330 steps at 4). Off by default: bounded to 120, the stage's steps at 8 and 16 volumes did not
            come back (docs/benchmarks/fewshot.md).
        decoder_lr: the decoder stage's peak learning rate (default a third of ``learning_rate``, the setting
            measured in docs/benchmarks/automatic.md).
        click_share: share of the box-prompted steps that simulate a user (a box or a click, then up to
            ``max_clicks`` clicks drawn from the current error; :mod:`~monai_cbo.training.interaction`), so that the
            adapter learns what a click means; 0 trains with boxes only. Default 0.5: on the hippocampus it turned
            five corrections from -0.046 Dice to +0.049 with no box protocol lower (docs/benchmarks/corrections.md).
        max_clicks: most correction clicks in an interactive step.
        seed: model initialisation, slice order, jitter.
    """

    preset: str = "adapter_cbo"
    rank: int | None = None
    learning_rate: float = 3e-4
    cbo_lr_mult: float = 1.0
    batch_size: int = 2
    box_jitter: int = 5
    walk_boxes: float = 0.0
    walk_prompt: bool = False
    walk_stage: str = "both"
    min_foreground: int = 4
    auto_share: float = 0.75
    background_ratio: float = 0.1
    validations: int = 4
    patience: int = 2
    val_slices: int = 8
    decoder_share: float = 0.3
    decoder_slices: int | None = None
    decoder_lr: float | None = None
    click_share: float = 0.5
    max_clicks: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("auto_share", "background_ratio", "decoder_share", "click_share", "walk_boxes"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share: 0 .. 1, got {getattr(self, name)}")
        for name in ("learning_rate", "decoder_lr", "cbo_lr_mult"):
            value = getattr(self, name)
            if value is not None and (not value > 0 or not math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("batch_size", "validations", "patience", "val_slices", "decoder_slices"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.walk_stage not in WALK_STAGES:
            raise ValueError(f"walk_stage is one of {', '.join(WALK_STAGES)}, got {self.walk_stage!r}")
        if self.walk_prompt and not self.walk_boxes:
            raise ValueError("walk_prompt tells walk boxes apart from drawn ones: it needs walk_boxes > 0")
        if self.max_clicks < 0:
            raise ValueError(f"max_clicks must be >= 0, got {self.max_clicks}")

    @property
    def interaction(self) -> Interaction | None:
        """The trainer's simulated interaction (None: box prompts only)."""
        if self.click_share <= 0:
            return None
        return Interaction(share=self.click_share, max_clicks=self.max_clicks, seed=self.seed)

    @property
    def decoder_learning_rate(self) -> float:
        return self.decoder_lr if self.decoder_lr is not None else self.learning_rate / 3


@dataclass(frozen=True)
class Budget:
    """How long training runs: ``minutes`` of wall-clock time for the whole command (loading and validation
    included; the recipe's ``decoder_share`` of it in the decoder stage), or exactly ``steps`` steps of the whole
    adapter and ``decoder_steps`` of the decoder stage (reproducible; ``minutes`` then is not used)."""

    minutes: float | None = 10.0
    steps: int | None = None
    decoder_steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is None and (self.minutes is None or not self.minutes > 0 or not math.isfinite(self.minutes)):
            raise ValueError(f"--minutes must be a positive number of minutes, got {self.minutes}")
        if self.steps is not None and self.steps < 0 or self.decoder_steps is not None and self.decoder_steps < 0:
            raise ValueError(f"--steps and --decoder-steps must be >= 0, got {self.steps}, {self.decoder_steps}")
        if self.decoder_steps is not None and self.steps is None:
            raise ValueError("--decoder-steps goes with --steps; a --minutes budget splits its time by the recipe")
        if self.steps == 0 and not self.decoder_steps:
            raise ValueError("--steps 0 trains nothing: give --decoder-steps, or more steps")


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
    """``count`` of ``items`` evenly spread, each the middle of its share: with two, the quarter and three-quarter
    marks. Spreading from end to end instead gave two slices per held-back volume (16 volumes: 4 held back, 8
    slices) the structure's first and last, where it is smallest: boxes scored 0.49-0.63 there, against
    0.83-0.86 with 8 volumes, and that signal chose the weights and the early stop."""
    if len(items) <= count:
        return list(items)
    return [items[int((i + 0.5) * len(items) / count)] for i in range(count)]


def split_validation(
    cases: list[LoadedCase], classes: Sequence[ClassKey], recipe: Recipe
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
    model: SamSegmenter,
    validation: Validation,
    classes: Sequence[ClassKey],
    device: torch.device,
    precision: str = "auto",
    embeddings: dict[str, dict] | None = None,
) -> dict[str, float]:
    """Pooled 2D Dice over the validation slices, mean over classes: ``boxes`` (a tight box per class on the
    slices holding it) and, for a model with class prompts, ``automatic`` (no prompt; background slices count
    their false positives); ``score`` is their mean (or ``boxes`` alone).

    ``embeddings`` (a dict, filled here: case name to its slices' embeddings) keeps the slices' embeddings for the
    next call: only while the encoder does not change (the decoder stage)."""
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
        cache = embeddings.setdefault(case.name, {}) if embeddings is not None else None
        for z, emb in inferer.encode(case.volume, sorted(set(zs)), cache):
            truth = [class_mask(case.gt[..., z], c) for c in classes]
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
    in two stages: the whole adapter (``"adapter"``), then the decoder stage (``"decoder"``: the encoder frozen
    with its PEFT weights as trained, each slice's embedding computed once and cached, so a step costs the mask
    decoder and class prompts only; :func:`~monai_cbo.bench.run.frozen_encoder`). In a minutes budget the decoder
    stage has ``recipe.decoder_share`` of the time plus what an early stop of the first stage left; in a steps
    budget, ``budget.decoder_steps``. Each stage validates ``recipe.validations`` times, keeps the best validated
    weights (the decoder stage starts from the first stage's best) and may stop early.

    A checkpoint (``state_path``, with ``extra_state`` added) is written at each validation, between the stages
    and when interrupted (Ctrl-C): ``resume`` (its contents) continues that run: its stage, weights, optimizer,
    steps, time spent and best validation.

    Returns the run's history: steps (both stages), seconds, loss per step, each validation (with its stage), the
    best one, why each stage stopped.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the adapter, whichever stage freezes
    record_interaction(model, recipe.interaction)  # also where a resumed run has no step left to build a trainer for
    encoder_trains = any(p.requires_grad for p in model.image_encoder.parameters())
    st = {
        "stage": "adapter" if encoder_trains else "decoder",
        "stage_step": 0,  # where the stage began: steps and seconds
        "stage_seconds": 0.0,
        "step": 0,
        "seconds": 0.0,
        "loss": [],
        "validations": [],
        "best": None,
        "best_state": None,
        "stopped": {},
        "pending": False,  # a validation was under way when the run was interrupted: a resumed run does it first
    }
    torch.manual_seed(recipe.seed)  # dropout draws: the same run gives the same adapter
    weights = optimizer_state = None
    if resume is not None:
        st.update({k: resume[k] for k in st if k in resume})
        weights, optimizer_state = resume["weights"], resume["optimizer"]
        torch.set_rng_state(resume["torch_rng"])  # dropout draws as the uninterrupted run's
        log(f"resuming in the {st['stage']} stage at step {st['step']} after {format_eta(st['seconds'])} of training")
    if weights is not None:
        model.load_state_dict(weights, strict=False)

    run = _Run(
        model,
        data,
        validation,
        recipe,
        budget,
        seconds,
        st,
        names,
        state_path,
        device,
        precision,
        cache_mib,
        extra_state,
        log,
    )

    if st["stage"] == "adapter":
        _stage(run, optimizer_state)
        optimizer_state = None
        if st["best_state"] is not None:
            model.load_state_dict(st["best_state"], strict=False)
        st.update(stage="decoder", stage_step=st["step"], stage_seconds=st["seconds"])
    if _stage_budget(recipe, budget, seconds, st) > 0:
        with frozen_encoder(model):
            plan = _stage_plan(recipe, budget, seconds, st)
            log(f"decoder stage: the encoder frozen, each slice encoded once ({plan})")
            _stage(run, optimizer_state)
    return _finish(model, st)


def _stage_budget(recipe: Recipe, budget: Budget, seconds: float | None, st: dict) -> float:
    """Steps (a steps budget) or seconds (a minutes budget) of the current stage."""
    if budget.steps is not None:
        return budget.steps if st["stage"] == "adapter" else (budget.decoder_steps or 0)
    if st["stage"] == "adapter":
        return (seconds or 0.0) * (1 - recipe.decoder_share)
    return (seconds or 0.0) - st["stage_seconds"]  # what the first stage left, an early stop's spare time included


def _stage_plan(recipe: Recipe, budget: Budget, seconds: float | None, st: dict) -> str:
    if budget.steps is not None:
        return f"{_stage_budget(recipe, budget, seconds, st):.0f} steps"
    return f"{format_eta(_stage_budget(recipe, budget, seconds, st))}"


@dataclass
class _Run:
    """What every stage of :func:`train_adapter` works with; ``st`` is the run's state, updated in place."""

    model: SamSegmenter
    data: BenchData
    validation: Validation
    recipe: Recipe
    budget: Budget
    seconds: float | None
    st: dict
    names: list[str]
    state_path: Path
    device: torch.device
    precision: str
    cache_mib: float
    extra_state: dict | None
    log: Callable[[str], None]


def _stage(run: _Run, optimizer_state: dict | None) -> None:
    """One stage of :func:`train_adapter`, from where ``run.st`` says it is; ``run.st`` is updated in place."""
    model, data, validation, recipe, budget, seconds, st = (
        run.model,
        run.data,
        run.validation,
        run.recipe,
        run.budget,
        run.seconds,
        run.st,
    )
    names, state_path, device, precision, extra_state, log = (
        run.names,
        run.state_path,
        run.device,
        run.precision,
        run.extra_state,
        run.log,
    )
    cache = feature_cache(run.cache_mib)
    stage, classes = st["stage"], list(data.classes)
    decoder = stage == "decoder"
    lr = recipe.decoder_learning_rate if decoder else recipe.learning_rate
    walk = recipe.walk_boxes if decoder or recipe.walk_stage == "both" else 0.0
    size = _stage_budget(recipe, budget, seconds, st)
    if size <= 0 or stage in st["stopped"]:
        return
    steps_cap = int(size) if budget.steps is not None else 1_000_000
    config = BenchConfig(
        datalist="",
        out=str(state_path.parent),
        steps=steps_cap,
        batch_size=recipe.batch_size,
        learning_rate=lr,
        box_jitter=recipe.box_jitter,
        walk_boxes=walk,
        walk_prompt=recipe.walk_prompt and walk > 0,
        min_foreground=recipe.min_foreground,
        auto_share=recipe.auto_share,
        background_ratio=recipe.background_ratio,
        precision=precision,
    )
    optimizer = build_optimizer(model, lr, cbo_lr_mult=recipe.cbo_lr_mult)
    peaks = [group["lr"] for group in optimizer.param_groups]  # each group's own (CBO's: lr x cbo_lr_mult)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    # a frozen encoder gives each validation slice one embedding for the whole stage: encode it once
    embeddings: dict[str, dict] | None = {} if decoder else None
    done = st["step"] - st["stage_step"]
    pool = _decoder_pool(data, recipe.decoder_slices, recipe.seed) if decoder else data
    batches = training_batches(config, pool, recipe.seed, model.img_size)
    for _ in range(done):  # the batches a resumed run has already trained on
        next(batches)
    model.train()
    trainer = build_trainer(
        model,
        optimizer,
        batches,
        device=device,
        precision=precision,
        epoch_length=steps_cap - done,
        feature_cache=cache,
        auto_share=recipe.auto_share if class_prompts_of(model) is not None else 0.0,
        seed=recipe.seed,
        interaction=recipe.interaction,
    )
    start, prior = time.perf_counter(), st["seconds"]
    marks = [(k + 1) / recipe.validations for k in range(recipe.validations)]
    last_log = [0.0]
    window = [st["step"], st["seconds"]]  # step and seconds at the last progress line

    def progress() -> float:
        if budget.steps is not None:
            return (st["step"] - st["stage_step"]) / size
        return (st["seconds"] - st["stage_seconds"]) / size

    def checkpoint() -> None:
        state = {
            **(extra_state or {}),
            **st,
            "weights": _weights(model, names),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        write_atomic(state_path, lambda tmp: torch.save(state, tmp), overwrite=True)

    def run_validation(engine: Engine | None) -> None:
        st["pending"] = True
        scores = validate(model, validation, classes, device, precision, embeddings)
        st["pending"] = False
        st["seconds"] = prior + time.perf_counter() - start
        scores.update(stage=stage, step=st["step"], seconds=round(st["seconds"], 1))
        st["validations"].append(scores)
        better = st["best"] is None or scores["score"] > st["best"]["score"] + 1e-3
        if better:
            st["best"], st["best_state"] = scores, _weights(model, names)
        parts = ", ".join(f"{k} {scores[k]:.3f}" for k in ("boxes", "automatic") if k in scores)
        log(f"  validation at step {st['step']}: {parts}{'  (best so far)' if better else ''}")
        ours = [v for v in st["validations"] if v["stage"] == stage]
        recent = ours[-recipe.patience - 1 :]
        if (
            engine is not None
            and not decoder  # its budget runs out: see Recipe.patience
            and progress() >= 0.5  # not while the learning rate is still high
            and len(recent) > recipe.patience
            and max(v["score"] for v in recent[1:]) <= recent[0]["score"] + 1e-3
            and st["best"]["step"] < st["step"]
        ):
            st["stopped"][stage] = f"validation did not improve in {recipe.patience} validations"
            engine.terminate()
        checkpoint()

    @trainer.on(Events.ITERATION_STARTED)
    def _set_lr(engine: Engine) -> None:
        set_cosine_lr(optimizer, peaks, progress())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after_step(engine: Engine) -> None:
        before = progress()
        st["step"] += 1
        st["seconds"] = prior + time.perf_counter() - start
        st["loss"].append(round(engine.state.output["loss"].item(), 5))
        now = progress()
        if time.perf_counter() - last_log[0] > 20 or now >= 1:
            # the rate since the last line: the decoder stage's first pass encodes its slices, later ones do not
            last_log[0] = time.perf_counter()
            seen, at = window
            window[:] = [st["step"], st["seconds"]]
            rate = (st["step"] - seen) * recipe.batch_size / max(st["seconds"] - at, 1e-6)
            if budget.steps is not None:
                left = (size - (st["step"] - st["stage_step"])) * recipe.batch_size / max(rate, 1e-6)
            else:
                left = size - (st["seconds"] - st["stage_seconds"])
            encoded = f"  {len(cache)} slices encoded" if decoder else ""
            log(
                f"  {stage} {min(now, 1):4.0%}  step {st['step']}  loss {np.mean(st['loss'][-10:]):.4f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {rate:.2f} slices/s{encoded}  "
                f"trained {format_eta(st['seconds'])}  ETA {format_eta(left)}"
            )
        if now >= 1:
            st["stopped"][stage] = "budget spent"
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
    ours = [v for v in st["validations"] if v["stage"] == stage]
    if not ours or ours[-1]["step"] != st["step"]:
        run_validation(None)
    st["stopped"].setdefault(stage, "budget spent")
    checkpoint()


def set_cosine_lr(optimizer: torch.optim.Optimizer, peaks: Sequence[float], progress: float) -> None:
    """Each parameter group's learning rate on a cosine from its own peak (``peaks``, in the optimizer's group order)
    to 0 over ``progress`` 0 .. 1, as the bundles' ``CosineAnnealingLR`` moves each group: the groups keep their
    ratios (CBO's relation tensors and heads at ``cbo_lr_mult`` x the base rate,
    :func:`~monai_cbo.peft.optimizer_param_groups`). Until 2026-12-07 every group was set to the base rate, so the
    CBO group trained at 1x in ``adapt`` and the label server's train task (docs/benchmarks/fewshot.md)."""
    factor = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    for group, peak in zip(optimizer.param_groups, peaks, strict=True):
        group["lr"] = peak * factor


def _decoder_pool(data: BenchData, most: int | None, seed: int) -> BenchData:
    """``data`` with at most ``most`` training slices and a quarter as many without the structure (a seeded
    sample, the same on a resumed run; :attr:`Recipe.decoder_slices`), or ``data`` itself."""
    if most is None or len(data.slices) <= most:
        return data
    rng = np.random.default_rng([seed, 2])
    pool = copy.copy(data)
    pool.slices = [data.slices[i] for i in sorted(rng.choice(len(data.slices), most, replace=False))]
    few = min(len(data.background), max(1, most // 4))
    pool.background = [data.background[i] for i in sorted(rng.choice(len(data.background), few, replace=False))]
    return pool


def _weights(model: SamSegmenter, names: list[str]) -> dict[str, torch.Tensor]:
    """The adapter's parameters by name, detached on the CPU, whether or not the stage trains them (the decoder
    stage freezes the encoder's: they are part of the adapter all the same)."""
    wanted = set(names)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in wanted}


def _finish(model: SamSegmenter, st: dict) -> dict:
    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"], strict=False)
    stopped = st["stopped"]
    return {
        "steps": st["step"],
        "decoder_steps": st["step"] - st["stage_step"] if st["stage"] == "decoder" else 0,
        "seconds": round(st["seconds"], 1),
        "loss": st["loss"],
        "validations": st["validations"],
        "best": st["best"],
        "stopped": "; ".join(f"{k} stage: {v}" for k, v in stopped.items()) if isinstance(stopped, dict) else stopped,
    }
