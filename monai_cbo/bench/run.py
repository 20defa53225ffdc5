"""One bench run, one (preset, seed): build the model, train the preset's parameters (:func:`_train`, with the
bundles' trainer and step), optionally a decoder stage, save the adapter, then segment and score every
evaluation case (:func:`_evaluate`); :func:`train_and_evaluate` returns what ``result.json`` holds.

What the frozen model computes identically in every epoch is computed once and kept in one
:func:`~monai_cbo.networks.feature_cache` (:func:`~monai_cbo.networks.cached_front`; in training through the
trainer's network wrapper :class:`~monai_cbo.training.CachedFrontSegmenter`, in evaluation through the
inferer's ``front_cache``): the encoder stages before the first trainable one, per slice, shared by all presets
and seeds; for ``freeze`` and ``decoder_only`` that is the whole image embedding. The results are the same as
without the cache (tested); only the time changes.

With ``decoder_steps`` (``--decoder-steps``) a run continues after its steps with the whole encoder frozen, its
PEFT weights as trained (:func:`frozen_encoder`): only the mask decoder and class prompts train, and the cache
then holds each slice's whole embedding, so those steps cost the decoder only.

With ``init_adapter`` (``--init-adapter``) each run starts from a trained adapter instead of the preset's initial
weights (checked against the bench first: :func:`check_init_adapter`); ``steps`` may then be 0, for a decoder
stage alone or to score the adapter as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler

from ..inferers.automatic import AutoConfig
from ..inferers.prompts import prompts_from_label
from ..inferers.segment import segment_volume
from ..inferers.slicewise import SliceWiseInferer
from ..inferers.volume import save_label_map
from ..metrics import MetricsTable, PooledDice, case_metrics
from ..models import build_segmenter
from ..networks import SamSegmenter, SliceCache, class_prompts_of, feature_cache
from ..peft import count_parameters, load_adapter, save_adapter
from ..training import WALK_FLAG_KEY, build_optimizer, build_trainer
from ..transforms.training import SlicePromptsd
from .config import BenchConfig, check_init_adapter, decoder_lr
from .data import BenchData, class_mask

__all__ = ["AUTO_MODES", "format_eta", "frozen_encoder", "train_and_evaluate", "training_batches"]


def format_eta(seconds: float) -> str:
    """Seconds as ``12m05s``, or ``1h02m`` from an hour on (progress lines' times and ETAs)."""
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
        walk_prompt=config.walk_prompt,
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
            with frozen_encoder(model):  # its own cache (whole embeddings), in what the shared one leaves
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


def training_batches(config: BenchConfig, data: BenchData, seed: int, size: int) -> Iterator[dict]:
    """The training batches of ``seed``, one per step: stacked ``image``, ``label``, ``boxes`` (and ``auto_label``
    with the step's ``auto_step`` flag), and the ``slice_keys`` that name each slice for the feature cache.

    With ``auto_share`` 0 the slices and boxes are those of every earlier bench. Otherwise a share ``auto_share``
    of the steps (drawn from their own generator) are automatic, and each of their slices is, with probability
    ``background_ratio``, swapped for a slice without any class (the model must learn to leave it empty).

    With ``walk_boxes`` > 0 that share of the box-prompted slices (drawn from a third generator, so the other draws
    do not change) take their boxes from a neighbouring slice, as a one-key-box walk prompts each slice
    (:class:`~monai_cbo.transforms.SlicePromptsd`'s ``walk_key``); with ``walk_prompt`` the batch's ``walk_flag``
    [B, K] says which."""
    auto_key = "auto_label" if config.auto_share > 0 else None
    prompts = SlicePromptsd(
        size=size,
        jitter=config.box_jitter,
        min_pixels=config.min_foreground,
        auto_label_key=auto_key,
        walk_key="walk" if config.walk_boxes > 0 else None,
        walk_flag_key=WALK_FLAG_KEY if config.walk_prompt else None,
    )
    prompts.set_random_state(seed)
    order = data.sample_order(seed, config.steps * config.batch_size)
    draws = np.random.default_rng([seed, 1])
    walks = np.random.default_rng([seed, 5])
    keys_out = ("image", "label", "boxes") + (("auto_label",) if auto_key else ())
    keys_out += (WALK_FLAG_KEY,) if config.walk_prompt else ()
    for step in range(config.steps):
        auto = config.auto_share > 0 and bool(draws.random() < config.auto_share)
        keys, samples = [], []
        for case_idx, z in order[step * config.batch_size : (step + 1) * config.batch_size]:
            if auto and data.background and draws.random() < config.background_ratio:
                case_idx, z = data.background[draws.integers(len(data.background))]
            case = data.train[case_idx]
            label = torch.from_numpy(np.stack([class_mask(case.gt[..., z], c) for c in data.classes])).float()
            sample = {"image": case.volume[..., z], "label": label}
            if config.walk_boxes > 0:
                use, side = walks.random() < config.walk_boxes, 1 if walks.random() < 0.5 else -1
                if use and not auto and 0 <= z + side < case.gt.shape[-1]:
                    sample["walk"] = np.stack([class_mask(case.gt[..., z + side], c) for c in data.classes])
            samples.append(prompts(sample))
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
        training_batches(config, data, seed, model.img_size),
        device=device,
        amp=amp,
        precision=config.precision,
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
                f"{rate:.2f} slices/s  run ETA {format_eta((config.steps - step) * config.batch_size / rate)}"
            )

    trainer.run()
    return losses, len(losses) * config.batch_size


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


@contextmanager
def frozen_encoder(model: SamSegmenter) -> Iterator[None]:
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
    inferer = SliceWiseInferer(model, device=device, amp=amp, precision=config.precision, front_cache=features)
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
