"""``monai-cbo bench``: the ablation presets on one dataset, same budget, several seeds, resumable.

One run is one (preset, seed): build the model (:func:`~monai_cbo.models.build_segmenter`, as the bundles do),
train the preset's parameters for ``steps`` optimiser steps of ``batch`` 2D slices (cosine LR from ``lr`` to 0)
with the bundles' trainer and step (:func:`~monai_cbo.training.build_trainer`), then segment every evaluation
case with box prompts from its label (the benchmark protocol of ``monai-cbo segment --label``) and score it.
Every preset sees the same slices in the same order with the same box jitter for a given seed, so presets
differ only in what trains.

Layout of ``OUT`` (everything a report needs; reports are rebuilt from it without retraining)::

    bench.json                      the configuration (a resumed bench must match it)
    runs/<preset>/seed<k>/
        result.json                 written last: parameter counts, timings, loss curve, pooled 2D Dice
        metrics.csv                 Dice / HD95 / NSD per evaluation case and class
        adapter.pt                  the trained adapter (not for ``freeze``)
        masks/<case>_seg.nii.gz     predicted label maps in the input geometry

A run counts as done when its ``result.json`` exists; an interrupted bench resumes at the first run without
one, and an interrupted run starts again from its first step (a run is minutes, a checkpoint per step is not
worth its disk traffic).

What the frozen model computes identically in every epoch is computed once and kept in one
:func:`~monai_cbo.networks.feature_cache` (:func:`~monai_cbo.networks.cached_front`; in training through the
trainer's network wrapper :class:`~monai_cbo.training.CachedFrontSegmenter`, in evaluation through the
inferer's ``front_cache``): the encoder stages before the first trainable one, per slice, shared by all presets
and seeds; for ``freeze`` and ``decoder_only`` that is the whole image embedding. The results are the same as
without the cache (tested); only the time changes.

With ``decoder_steps`` (``--decoder-steps``) a run continues after its steps with the whole encoder frozen, its
PEFT weights as trained (:func:`_frozen_encoder`): only the mask decoder and class prompts train, and the cache
then holds each slice's whole embedding, so those steps cost the decoder only.

With ``init_adapter`` (``--init-adapter``) each run starts from a trained adapter instead of the preset's initial
weights (checked against the bench first: :func:`check_init_adapter`); ``steps`` may then be 0, for a decoder
stage alone or to score the adapter as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler

from ..data import load_datalist
from ..inferers.automatic import AutoConfig
from ..inferers.prompts import prompts_from_label
from ..inferers.segment import Case, check_label, segment_volume
from ..inferers.slicewise import SliceWiseInferer
from ..inferers.volume import Preprocess, SliceGeometry, case_name, load_volume, prepare_volume, save_label_map
from ..metrics import MetricsTable, PooledDice, case_metrics
from ..models import build_segmenter
from ..networks import SamSegmenter, SliceCache, class_prompts_of, feature_cache
from ..peft import adapter_class_prompts, count_parameters, load_adapter, read_adapter, save_adapter
from ..peft.config import ABLATION_PRESETS, PRESETS, PeftConfig
from ..peft.state import _config_mismatch
from ..training import build_optimizer, build_trainer
from ..transforms.intensity import DEFAULT_CT_WINDOW
from ..transforms.training import SlicePromptsd
from ..utils import check_option, machine_summary, write_atomic

__all__ = ["BenchConfig", "BenchData", "BenchFailed", "run_bench", "train_and_evaluate"]


class BenchFailed(RuntimeError):
    """Some runs of a bench failed; the message lists each with its reason."""


DEFAULT_PRESETS = ABLATION_PRESETS
#: names a bench.json written before 2026-12-06 used, and the names the bundles, the CLI and BenchConfig use now
FORMER_NAMES = {"batch": "batch_size", "lr": "learning_rate", "jitter": "box_jitter", "min_pixels": "min_foreground"}


def _current_names(saved: dict) -> dict:
    return {FORMER_NAMES.get(k, k): v for k, v in saved.items()}


#: config fields that may change between an interrupted bench and its resumption
_RESUMABLE = {"presets", "seeds", "device", "cache_mib", "out"}


@dataclass
class BenchConfig:
    """Everything that defines a bench; saved as ``bench.json``. See ``monai-cbo bench --help``."""

    datalist: str
    out: str
    dataset_dir: str | None = None
    train_split: str = "training"
    eval_split: str = "test"
    max_train_cases: int | None = None
    max_eval_cases: int | None = None
    presets: list[str] = field(default_factory=lambda: list(DEFAULT_PRESETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "litemedsam"
    checkpoint: str | None = None
    rank: int | None = None
    steps: int = 60
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    box_jitter: int = 5
    min_foreground: int = 4
    classes: list[int] | None = None
    modality: str = "auto"
    ct_window: list[float] = field(default_factory=lambda: list(DEFAULT_CT_WINDOW))
    channels: list[int] | None = None
    view: str = "axial"
    device: str | None = None
    amp: bool = True
    cache_mib: float = 6144.0
    auto_share: float = 0.0
    background_ratio: float = 0.1
    decoder_steps: int = 0
    decoder_lr: float | None = None
    init_adapter: str | None = None
    auto_z_smooth: float = 0.0

    def __post_init__(self) -> None:
        for preset in self.presets:
            check_option("preset", preset, PRESETS)
        if not self.presets or not self.seeds:
            raise ValueError("give at least one preset and one seed")
        if len(set(self.presets)) != len(self.presets) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"presets {self.presets} and seeds {self.seeds} must not repeat")
        if self.init_adapter is not None and (len(self.presets) != 1 or self.presets[0] == "freeze"):
            raise ValueError(
                f"init_adapter {self.init_adapter} holds one preset's weights: bench exactly that preset "
                f"(--presets <its preset>), not {','.join(self.presets)}"
            )
        if self.steps < (0 if self.init_adapter else 1) or self.batch_size < 1:
            raise ValueError(
                f"steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1 (steps may be 0 with an "
                "init_adapter: its decoder stage only, or the adapter scored as it is)"
            )
        if self.decoder_steps < 0 or (self.decoder_lr is not None and self.decoder_lr <= 0):
            raise ValueError(
                f"decoder_steps ({self.decoder_steps}) must be >= 0 and decoder_lr ({self.decoder_lr}) > 0; "
                "0 decoder steps: no decoder stage"
            )
        if not (0 <= self.auto_share <= 1 and 0 <= self.background_ratio <= 1):
            raise ValueError(
                f"auto_share ({self.auto_share}) and background_ratio ({self.background_ratio}) are shares in [0, 1]"
            )
        Preprocess(self.modality, tuple(self.ct_window), self.channels, self.view)  # validates
        AutoConfig(z_smooth=self.auto_z_smooth)  # validates

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.modality, tuple(self.ct_window), self.channels, self.view)

    @classmethod
    def from_saved(cls, saved: dict) -> BenchConfig:
        """The config of a ``bench.json`` (keys that are not fields, such as the command, are left out); a bench
        saved before the settings took the bundles' names (:data:`FORMER_NAMES`) reads as well."""
        return cls(**{k: v for k, v in _current_names(saved).items() if k in cls.__dataclass_fields__})

    def runs(self) -> list[tuple[str, int]]:
        """(preset, seed) in execution order: seed-major, so a partial bench already compares every preset.
        ``freeze`` trains nothing and draws nothing at random, so it runs once (seed of the first run)."""
        order = []
        for seed in self.seeds:
            for preset in self.presets:
                if preset == "freeze" and seed != self.seeds[0]:
                    continue
                order.append((preset, seed))
        return order

    def budget(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _RESUMABLE}


@dataclass
class LoadedCase:
    """A bench case held in memory, preprocessed (not to be confused with :class:`~monai_cbo.inferers.Case`, a
    case to segment from files)."""

    name: str
    volume: torch.Tensor  # [3, H, W, D] in the sliced view, [0, 1]
    gt: np.ndarray  # [H, W, D] sliced integer labels
    geometry: SliceGeometry
    image: Any = None  # the loaded MetaTensor (evaluation cases: to write masks in the input geometry)
    spacing: np.ndarray | None = None


class BenchData:
    """The bench's cases, loaded once: training slices with foreground, evaluation volumes with labels.

    Everything stays in memory, preprocessed (float32, 3 channels, in the sliced view): about 0.1 GB per
    BraTS-sized case (240 x 240 x 155), a few MB per hippocampus case. For a training set larger than memory,
    bench a subset (``max_train_cases``) or train with the bundles, which stream from disk.

    Args:
        config: the bench configuration (datalist, splits, case limits, preprocessing, classes).
        log: where progress lines go.
    """

    def __init__(self, config: BenchConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        meta = json.loads(Path(config.datalist).read_text(encoding="utf-8"))
        names = {int(k): v for k, v in (meta.get("labels") or {}).items() if int(k) != 0}
        train = load_datalist(config.datalist, config.train_split, config.dataset_dir)[: config.max_train_cases]
        evals = load_datalist(config.datalist, config.eval_split, config.dataset_dir)[: config.max_eval_cases]
        log(f"loading {len(train)} {config.train_split} and {len(evals)} {config.eval_split} cases ...")
        self.train = [self._load(e, keep_image=False) for e in train]
        self.eval = [self._load(e, keep_image=True) for e in evals]
        present = sorted({int(v) for c in self.train + self.eval for v in np.unique(c.gt) if v})
        self.classes = list(config.classes) if config.classes else present
        if not self.classes:
            raise ValueError(f"datalist {config.datalist}: no foreground label in any case; check the label files")
        #: metric spec: per class, plus the dataset's evaluation regions (BraTS) where the datalist names them
        self.class_names = {c: names.get(c, str(c)) for c in self.classes}
        self.metric_classes: dict[str, list[int]] = {name: [c] for c, name in self.class_names.items()}
        for region, ids in (meta.get("regions") or {}).items():
            ids = sorted(int(i) for i in ids)
            if self.metric_classes.get(region) == ids:
                continue  # e.g. BraTS 2015's "enhancing": a label and a region at once
            self.metric_classes[region if region not in self.metric_classes else f"{region} (region)"] = ids
        if len(set(self.class_names.values())) != len(self.class_names):
            raise ValueError(f"datalist {config.datalist}: label names {self.class_names} must be distinct")
        self.slices = [
            (i, z)
            for i, c in enumerate(self.train)
            for z in range(c.gt.shape[-1])
            if max(int((c.gt[..., z] == k).sum()) for k in self.classes) >= config.min_foreground
        ]
        if not self.slices:
            raise ValueError(
                f"datalist {config.datalist}: no {config.train_split} slice holds >= {config.min_foreground} "
                f"pixels of classes {self.classes}"
            )
        foreground = set(self.slices)
        #: slices with no class at all (fewer than min_foreground of each): automatic steps learn "absent" from them
        self.background = [(i, z) for i, c in enumerate(self.train) for z in range(c.gt.shape[-1])]
        self.background = [s for s in self.background if s not in foreground]
        log(
            f"{len(self.slices)} training slices with foreground, {len(self.background)} without; "
            f"classes {self.class_names}"
        )

    def _load(self, entry: dict, keep_image: bool) -> LoadedCase:
        case = Case(image=entry["image"], label=entry["label"], name=entry_name(entry))
        image = load_volume(case.image)
        volume, geometry = prepare_volume(image, self.config.preprocess)
        gt, _ = check_label(load_volume(case.label), image)  # the checks of monai-cbo segment --label
        spacing = np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
        return LoadedCase(
            case.name,
            volume,
            np.ascontiguousarray(geometry.to_sliced(gt)),
            geometry,
            image if keep_image else None,
            spacing,
        )

    def sample_order(self, seed: int, count: int) -> list[tuple[int, int]]:
        """``count`` training slices for ``seed``: passes over a shuffled pool, identical for every preset."""
        rng = np.random.default_rng(seed)
        order: list[tuple[int, int]] = []
        while len(order) < count:
            order += [self.slices[i] for i in rng.permutation(len(self.slices))]
        return order[:count]


def entry_name(entry: dict) -> str:
    """A datalist entry's case name: its ``case`` field, else the name of its (first) image file."""
    image = entry["image"]
    return entry.get("case") or case_name(image[0] if isinstance(image, list) else image)


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(
    config: BenchConfig,
    data: BenchData,
    preset: str,
    seed: int,
    run_dir: Path,
    features: SliceCache | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one (preset, seed) run and evaluate it; write its files into ``run_dir``; return its result."""
    device = config.torch_device
    amp = config.amp and device.type == "cuda"
    torch.manual_seed(seed)
    auto = config.auto_share > 0 and preset != "freeze"
    model = build_segmenter(
        config.model,
        config.checkpoint,
        preset,
        config.rank,
        seed=seed,
        class_names=list(data.class_names.values()) if auto else None,
        class_values=data.classes if auto else None,
    ).to(device)
    init = _load_init_adapter(config, model) if config.init_adapter else None
    counts = count_parameters(model)
    start = time.perf_counter()
    losses: list[float] = []
    slices_seen = 0
    decoder_stage = None
    if counts["total_trainable"]:
        if config.steps:
            losses, slices_seen = _train(config, data, model, seed, device, amp, features, log, f"{preset} seed {seed}")
        if config.decoder_steps:  # the decoder stage: the same slices, jitter and automatic share, decoder only
            stage = dataclasses.replace(config, steps=config.decoder_steps, learning_rate=decoder_lr(config))
            left = config.cache_mib - (features.bytes / 2**20 if features is not None else 0.0)
            stage_start = time.perf_counter()
            with _frozen_encoder(model):  # its own cache (whole embeddings), in what the shared one leaves
                stage_losses, stage_slices = _train(
                    stage,
                    data,
                    model,
                    seed,
                    device,
                    amp,
                    feature_cache(left) if left > 0 else None,
                    log,
                    f"{preset} seed {seed} decoder stage",
                )
            decoder_stage = {
                "steps": config.decoder_steps,
                "learning_rate": stage.learning_rate,
                "slices": stage_slices,
                "seconds": time.perf_counter() - stage_start,
                "loss": stage_losses,
            }
        save_adapter(
            model,
            run_dir / "adapter.pt",
            overwrite=True,
            metadata={
                "bench": str(Path(config.out).name),
                "seed": seed,
                "steps": config.steps,
                "decoder_steps": config.decoder_steps,
                **({"init_adapter": init} if init else {}),
            },
        )
    train_seconds = time.perf_counter() - start
    eval_start = time.perf_counter()
    modes: dict[str, AutoConfig | None] = {"": None, **(AUTO_MODES if auto else {})}
    if auto and config.auto_z_smooth:  # a bundle's post-processing: largest component after smoothing
        modes["auto_lcc_smooth"] = AutoConfig(largest_component=True, z_smooth=config.auto_z_smooth)
    scores = _evaluate(config, data, model, device, amp, features, run_dir, modes)
    for mode, (table, *_) in scores.items():
        table.write_csv(run_dir / f"metrics{'_' + mode if mode else ''}.csv", overwrite=True)
    _, pooled, pooled_gt, n_slices = scores[""]
    automatic = {
        mode: {
            "config": dataclasses.asdict(cfg),
            "pooled_dice_2d": scores[mode][1],
            "pooled_dice_2d_gt_slices": scores[mode][2],
        }
        for mode, cfg in modes.items()
        if cfg is not None
    }
    return {
        "preset": preset,
        "seed": seed,
        "model": config.model,
        "classes": data.metric_classes,  # scored name -> label values (a region is several)
        "params": counts,
        "train": {
            "steps": config.steps if slices_seen else 0,
            "slices": slices_seen,
            "seconds": train_seconds,
            "loss": losses,
            "decoder_stage": decoder_stage,
            "init_adapter": init,
        },
        "eval": {
            "cases": len(data.eval),
            "slices": n_slices,
            "seconds": time.perf_counter() - eval_start,
            "pooled_dice_2d": pooled,
            "pooled_dice_2d_gt_slices": pooled_gt,
        },
        "automatic": automatic,
        "device": str(device),
        "amp": amp,
    }


#: the automatic variants every run with class prompts is scored in (``metrics_<mode>.csv``)
AUTO_MODES = {
    "auto": AutoConfig(),
    "auto_refine": AutoConfig(refine=True),
    "auto_lcc": AutoConfig(largest_component=True),
}


def _batches(config: BenchConfig, data: BenchData, seed: int, size: int) -> Iterator[dict]:
    """The training batches of ``seed``, one per step: stacked ``image``, ``label``, ``boxes`` (and ``auto_label``
    with the step's ``auto_step`` flag), and the ``slice_keys`` that name each slice for the feature cache.

    With ``auto_share`` 0 the slices and boxes are those of every earlier bench. Otherwise a share ``auto_share``
    of the steps (drawn from their own generator) are automatic, and each of their slices is, with probability
    ``background_ratio``, swapped for a slice without any class (the model must learn to leave it empty)."""
    auto_key = "auto_label" if config.auto_share > 0 else None
    prompts = SlicePromptsd(
        size=size, jitter=config.box_jitter, min_pixels=config.min_foreground, auto_label_key=auto_key
    )
    prompts.set_random_state(seed)
    order = data.sample_order(seed, config.steps * config.batch_size)
    classes = torch.tensor(data.classes).view(-1, 1, 1)
    draws = np.random.default_rng([seed, 1])
    keys_out = ("image", "label", "boxes") + (("auto_label",) if auto_key else ())
    for step in range(config.steps):
        auto = config.auto_share > 0 and bool(draws.random() < config.auto_share)
        keys, samples = [], []
        for case_idx, z in order[step * config.batch_size : (step + 1) * config.batch_size]:
            if auto and data.background and draws.random() < config.background_ratio:
                case_idx, z = data.background[draws.integers(len(data.background))]
            case = data.train[case_idx]
            label = (torch.from_numpy(case.gt[..., z]).unsqueeze(0) == classes).float()
            samples.append(prompts({"image": case.volume[..., z], "label": label}))
            keys.append(("train", case_idx, z))
        batch = {**{k: torch.stack([s[k] for s in samples]) for k in keys_out}, "slice_keys": keys}
        if auto_key:
            batch["auto_step"] = auto
        yield batch


def _train(
    config: BenchConfig,
    data: BenchData,
    model: SamSegmenter,
    seed: int,
    device: torch.device,
    amp: bool,
    features: SliceCache | None,
    log: Callable[[str], None],
    title: str,
) -> tuple[list[float], int]:
    """Train ``model`` for ``config.steps`` steps with the bundles' trainer (:func:`~monai_cbo.training.build_trainer`),
    the LR on a cosine from ``config.learning_rate`` to 0 over the steps; log every tenth step. Returns the loss per
    step and the number of slices seen."""
    model.train()
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    trainer = build_trainer(
        model,
        optimizer,
        _batches(config, data, seed, model.img_size),
        device=device,
        amp=amp,
        epoch_length=config.steps,
        feature_cache=features,
        auto_share=config.auto_share if class_prompts_of(model) is not None else 0.0,
        seed=seed,
        handlers=[LrScheduleHandler(schedule, print_lr=False, epoch_level=False)],
    )
    losses: list[float] = []
    every = max(1, config.steps // 10)
    start = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log_step(engine: Engine) -> None:
        step = engine.state.iteration
        losses.append(round(engine.state.output["loss"].item(), 5))
        if step % every == 0 or step == config.steps:
            rate = step * config.batch_size / (time.perf_counter() - start)
            log(
                f"  {title}: step {step}/{config.steps}  loss {np.mean(losses[-every:]):.4f}  "
                f"{rate:.2f} slices/s  run ETA {_eta((config.steps - step) * config.batch_size / rate)}"
            )

    trainer.run()
    return losses, len(losses) * config.batch_size


def check_init_adapter(config: BenchConfig) -> dict:
    """Read ``config.init_adapter`` and check that it can start a run of ``config``: the same model, the PEFT
    config of ``config``'s preset and rank, and class prompts exactly when the bench trains automatic steps.
    Runs before any data is loaded; returns the read checkpoint. Raises ``ValueError`` naming the file and the fix."""
    path = config.init_adapter
    payload = read_adapter(path)
    preset = config.presets[0]
    if payload["model_name"] != config.model:
        raise ValueError(
            f"--init-adapter {path} was trained on model {payload['model_name']!r}, the bench builds "
            f"{config.model!r}: pass --model {payload['model_name']}"
        )
    saved = PeftConfig.from_dict(payload["peft_config"])
    diff = _config_mismatch(saved, PeftConfig.from_preset(preset, rank=config.rank))
    if diff:
        raise ValueError(
            f"--init-adapter {path} is a {saved.preset} adapter that does not match preset {preset}"
            f"{'' if config.rank is None else f' rank {config.rank}'} ({'; '.join(diff)}): pass "
            f"--presets {saved.preset}"
            + (
                f" --rank {saved.rank}"
                if config.rank is not None or saved.rank != PeftConfig.from_preset(saved.preset).rank
                else ""
            )
        )
    names = (adapter_class_prompts(payload) or {}).get("names")
    if names and not config.auto_share:
        raise ValueError(
            f"--init-adapter {path} holds class prompts ({', '.join(names)}): keep training them with --auto-share "
            "(its automatic mode is scored too); without them the bench builds no class prompts to load them into"
        )
    if config.auto_share and not names:
        raise ValueError(
            f"--init-adapter {path} has no class prompts, so it cannot start automatic steps: pass --auto-share 0, "
            "or start from an adapter trained with automatic steps"
        )
    return payload


def _load_init_adapter(config: BenchConfig, model: SamSegmenter) -> dict:
    """Load ``config.init_adapter`` into the freshly built ``model``; return its provenance for the run's
    records (path, SHA-256, the checkpoint's own metadata)."""
    path = Path(config.init_adapter)
    payload = check_init_adapter(config)
    try:
        load_adapter(model, path, payload)  # class prompts for other classes than the datalist's fail here
    except ValueError as err:
        raise ValueError(f"--init-adapter: {err}") from None
    return {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "metadata": payload.get("metadata", {}),
    }


def decoder_lr(config: BenchConfig) -> float:
    """The decoder stage's peak LR: ``config.decoder_lr``, else a third of ``config.learning_rate`` (the measured
    setting)."""
    return config.decoder_lr if config.decoder_lr is not None else config.learning_rate / 3


@contextmanager
def _frozen_encoder(model: SamSegmenter) -> Iterator[None]:
    """The decoder stage: every encoder weight frozen inside the block (its PEFT weights as trained so far),
    trainable again after it, so that the adapter saves them. With the whole encoder frozen,
    :func:`~monai_cbo.networks.frozen_prefix` covers every stage: the cache then keeps each slice's embedding and a
    step costs the decoder only. Training mode is set again on entry and exit: ``SamSegmenter.train`` turns off
    the dropout of modules with nothing left to train (the adapter presets'), which would otherwise make every
    step's embedding differ and rule the cache out."""
    thawed = [p for p in model.image_encoder.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    model.train(model.training)  # the frozen adapters' dropout off: the encoder's output is fixed, and cached
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)
        model.train(model.training)


def _evaluate(
    config: BenchConfig,
    data: BenchData,
    model: SamSegmenter,
    device: torch.device,
    amp: bool,
    features: SliceCache | None,
    run_dir: Path,
    modes: dict[str, AutoConfig | None],
) -> dict[str, tuple[MetricsTable, dict, dict, int]]:
    """Segment and score every evaluation case in each of ``modes`` (name -> None: box prompts from the label,
    the benchmark protocol; an :class:`AutoConfig`: no prompt, the model's class prompts) and write the masks
    (``masks/`` for the unnamed mode ``""``, ``masks_<mode>/`` otherwise). Each slice is encoded once per case
    for all modes. Returns per mode the per-case table, the pooled 2D Dice (all slices, and slices showing the
    class) and the number of slices segmented."""
    model.eval()
    inferer = SliceWiseInferer(model, device=device, amp=amp, front_cache=features)
    tables = {mode: MetricsTable() for mode in modes}
    pooled = {mode: PooledDice(data.metric_classes) for mode in modes}
    pooled_gt = {mode: PooledDice(data.metric_classes, axis=-1, gt_slices_only=True) for mode in modes}
    n_slices = dict.fromkeys(modes, 0)
    for case in data.eval:
        gt = case.geometry.to_stored(case.gt)
        cache = SliceCache(name=("eval", case.name))  # its slices' frozen front: in `features` under its name
        for mode, auto in modes.items():
            if auto is None:
                prompts = prompts_from_label(case.gt, data.classes)
                seg = segment_volume(inferer, case.volume, case.geometry, prompts, cache=cache)
            else:
                seg = segment_volume(inferer, case.volume, case.geometry, auto=auto, cache=cache)
            n_slices[mode] += seg.slices
            mask_dir = run_dir / (f"masks_{mode}" if mode else "masks")
            save_label_map(seg.labels, case.image, mask_dir / f"{case.name}_seg.nii.gz", overwrite=True)
            tables[mode].add(case.name, case_metrics(seg.labels, gt, data.metric_classes, case.spacing))
            pooled[mode].update(seg.sliced_labels, case.gt)  # sliced view: the last axis is the slicing direction
            pooled_gt[mode].update(seg.sliced_labels, case.gt)
    return {m: (tables[m], pooled[m].compute(), pooled_gt[m].compute(), n_slices[m]) for m in modes}


def _check_config(config: BenchConfig, path: Path) -> None:
    saved = _current_names(json.loads(path.read_text(encoding="utf-8")))
    budget = config.budget()

    def same(key: str, old: object, new: object) -> bool:
        if key in ("datalist", "dataset_dir", "init_adapter") and old and new:  # relative or absolute, the same file
            return Path(str(old)).resolve() == Path(str(new)).resolve()
        return old == new

    defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig) if f.default is not dataclasses.MISSING}
    # a field added after the bench was made counts as its default there
    diff = {
        k: (saved.get(k, defaults.get(k)), v)
        for k, v in budget.items()
        if not same(k, saved.get(k, defaults.get(k)), v)
    }
    if diff:
        details = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diff.items())
        raise ValueError(
            f"{path} was made with another budget or data ({details}); resume it with the same "
            "options, or give a new --out"
        )


def run_bench(config: BenchConfig, log: Callable[[str], None] | None = None, command: str | None = None) -> list[dict]:
    """Run every (preset, seed) of ``config`` not yet done in ``config.out``; return all results (done ones
    read back). A failing run is reported and the others still run; raises at the end if any failed.
    ``command`` (the command line) and the machine are recorded in ``bench.json`` for the report."""
    log = log or (lambda line: print(line, flush=True))
    if config.init_adapter:
        check_init_adapter(config)  # before anything is written or minutes of data are loaded
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "bench.json"
    if config_path.exists():
        _check_config(config, config_path)
        saved = _current_names(json.loads(config_path.read_text(encoding="utf-8")))
        saved.update({k: getattr(config, k) for k in _RESUMABLE})
        payload = saved
    else:
        payload = dataclasses.asdict(config)
    device = config.torch_device
    payload["command"] = command or payload.get("command")
    payload["machine"] = {**machine_summary(device), "cpus": os.cpu_count()}
    write_atomic(config_path, lambda p: p.write_text(json.dumps(payload, indent=2), encoding="utf-8"), overwrite=True)

    runs = config.runs()
    todo = [(p, s) for p, s in runs if not (out / "runs" / p / f"seed{s}" / "result.json").exists()]
    log(
        f"bench {out}: {len(runs)} runs ({len(runs) - len(todo)} done, {len(todo)} to do): "
        f"{config.steps} steps x {config.batch_size} slices, learning rate {config.learning_rate}, model {config.model}"
    )
    if not todo:
        return collect_results(out)
    data = BenchData(config, log)
    features = feature_cache(config.cache_mib) if config.cache_mib > 0 else None
    durations: dict[str, list[float]] = {}  # seconds per run by preset, finished runs included, for the ETA
    for done in collect_results(out):
        durations.setdefault(done["preset"], []).append(done.get("seconds", math.nan))
    failures = []
    bench_start = time.perf_counter()
    for n, (preset, seed) in enumerate(todo, 1):
        run_dir = out / "runs" / preset / f"seed{seed}"
        if run_dir.exists():  # an interrupted run: start it again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        known = [t for ts in durations.values() for t in ts if math.isfinite(t)]
        left = sum(np.mean(durations.get(p, known)) for p, _ in todo[n - 1 :]) if known else math.nan
        eta = f", bench ETA {_eta(left)}" if known else ""
        log(f"[{n}/{len(todo)}] {preset} seed {seed}{eta}")
        start = time.perf_counter()
        try:
            result = train_and_evaluate(config, data, preset, seed, run_dir, features, log)
        except Exception as err:  # one failing run must not lose the others
            failures.append(f"{preset} seed {seed}: {type(err).__name__}: {err}")
            log(f"  failed: {failures[-1]}")
            continue
        result["seconds"] = time.perf_counter() - start
        write_atomic(
            run_dir / "result.json", lambda p, r=result: p.write_text(json.dumps(r, indent=1), encoding="utf-8"), True
        )
        durations.setdefault(preset, []).append(result["seconds"])
        dice = ", ".join(f"{k} {v:.3f}" for k, v in _mean_dice(run_dir / "metrics.csv").items())
        log(f"  done in {_eta(result['seconds'])}: mean Dice {dice}")
    if features is not None:
        log(
            f"feature cache: {len(features)} entries, {features.bytes / 2**20:.0f} MiB, "
            f"{features.hits} hits / {features.misses} misses"
        )
    log(f"bench finished in {_eta(time.perf_counter() - bench_start)}")
    if failures:
        raise BenchFailed(
            f"{len(failures)} run(s) failed (the others are kept; fix the cause and run the same "
            "command again to redo only these):\n  " + "\n  ".join(failures)
        )
    return collect_results(out)


def _mean_dice(csv: Path) -> dict[str, float]:
    return {row["class"]: row["dice_mean"] for row in MetricsTable.read_csv(csv).summary()}


def collect_results(out: str | Path) -> list[dict]:
    """The ``result.json`` of every finished run under ``out``, in preset then seed order."""
    found = []
    for path in sorted(Path(out).glob("runs/*/seed*/result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        result["dir"] = str(path.parent)
        found.append(result)
    return found


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `monai-cbo bench`")
