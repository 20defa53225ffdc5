"""The one training step: a MONAI ``SupervisedTrainer`` over prompted 2D slices, built by :func:`build_trainer`.

Every caller trains through it, so a preset is trained the same way wherever it is trained:

- the bundles (``train.json``: ``train#trainer``),
- ``monai-cbo bench`` (:mod:`monai_cbo.bench.runner`: steps x slices with a per-step cosine schedule),
- ``monai-cbo speed`` (:mod:`monai_cbo.timing.speed`: times :func:`train_step`).

One step: the batch's image and label go to ``device``, its ``boxes`` become the network's ``boxes``
keyword (:class:`PreparePromptBatch`); the network predicts mask logits per prompt; the loss is
:class:`~monai_cbo.losses.PromptDiceBCELoss`; the gradients are zeroed (to ``None``), back-propagated and
stepped by the optimizer of :func:`build_optimizer` (through a gradient scaler under CUDA mixed precision).

An *automatic* step (a share ``auto_share`` of the steps, drawn per step from a seeded generator, or chosen by
the batch's ``auto_step`` flag) prompts every class of every slice with its learned class prompt
(:mod:`~monai_cbo.networks.class_prompts`) instead of a box, against the batch's ``auto_label`` targets: one
channel per class, empty where the class is absent, so the model also learns to say "not here". One adapter
thus serves both box prompts and automatic runs.

An *interactive* step (a share ``interaction.share`` of the box-prompted steps, :mod:`.interaction`) simulates a
user: a box or one click first, then rounds of clicks drawn from the current error (decoded without gradients on
the step's embedding), and trains the last round's prompt, so that an adapter learns what a click means.

The frozen front of the encoder (:func:`~monai_cbo.networks.frozen_prefix`) computes the same features for the
same slice in every step; given a :class:`~monai_cbo.networks.SliceCache` and batches that name their
slices (``slice_keys``), :class:`CachedFrontSegmenter` takes those features from the cache
(:func:`~monai_cbo.networks.cached_front`, as :class:`~monai_cbo.inferers.SliceWiseInferer` does in evaluation).
That changes the time of a step, not its result (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer
from torch import nn

from ..losses import PromptDiceBCELoss
from ..networks import (
    TRAINED_INTERACTION,
    SamSegmenter,
    SegmenterOutput,
    SliceCache,
    cached_front,
    class_prompts_of,
    frozen_prefix,
)
from ..peft import optimizer_param_groups
from ..precision import resolve_precision
from ..utils import check_option
from .interaction import Interaction, InteractionDraw, simulate_rounds

__all__ = [
    "AutocastForward",
    "CachedFrontSegmenter",
    "PreparePromptBatch",
    "build_optimizer",
    "build_trainer",
    "record_interaction",
    "train_step",
    "trainer_precision",
]

#: the batch entry [B, P] (bool) that flags the boxes a walk drew (``SlicePromptsd(walk_flag_key=...)``)
WALK_FLAG_KEY = "walk_flag"
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(
    network: nn.Module, lr: float, weight_decay: float = 0.0, name: str = "adamw", cbo_lr_mult: float | None = None
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over the trainable parameters, the CBO group at its LR multiplier (``cbo_lr_mult``; None:
    the model's PEFT config's).

    ``network`` may be wrapped (``DistributedDataParallel``, :class:`CachedFrontSegmenter`): its ``module`` /
    ``model`` is used.

    Raises:
        ValueError: nothing trains (the ``freeze`` preset): evaluate it instead of training it.
    """
    model = _unwrap(network)
    groups = optimizer_param_groups(model, lr, weight_decay, cbo_lr_mult)
    if not groups:
        preset = getattr(getattr(model, "peft_config", None), "preset", "?")
        raise ValueError(f"preset {preset!r} trains no parameters; evaluate it with evaluate.json and --adapter ''")
    check_option("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](groups, lr=lr)


def trainer_precision(trainer: SupervisedTrainer) -> str:
    """The number format a trainer of :func:`build_trainer` runs its forward pass in: ``bf16``, ``fp16`` or
    ``fp32``, read from what it was built with (the bf16 wrapper, or MONAI's CUDA amp)."""
    if isinstance(trainer.network, AutocastForward):
        return "bf16"
    return "fp16" if trainer.amp else "fp32"


def record_interaction(network: nn.Module, interaction: Interaction | None) -> None:
    """Note on the segmenter inside ``network`` that it is trained with simulated clicks, when ``interaction``
    simulates any: its adapter file then says so (``monai-cbo segment`` warns where a click alone starts an object
    on a model without that record)."""
    if interaction is not None and interaction.share > 0:
        record = {k: v for k, v in asdict(interaction).items() if k != "seed"}
        setattr(_unwrap(network), TRAINED_INTERACTION, record)


def _unwrap(network: nn.Module) -> nn.Module:
    """The segmenter inside any wrappers (``DistributedDataParallel``, :class:`AutocastForward`,
    :class:`CachedFrontSegmenter`), however they nest."""
    while True:
        inner = getattr(network, "module", None)
        if inner is None:
            inner = getattr(network, "model", None)
        if not isinstance(inner, nn.Module):
            return network
        network = inner


def _float(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float()
    return [_float(v) for v in x] if isinstance(x, list) else x


class AutocastForward(nn.Module):
    """``module`` whose forward pass runs under bf16 autocast on its device, with its outputs back in fp32 so that
    the loss and its gradient start in fp32 (no gradient scaler: bf16 has fp32's range). What ``--precision bf16``
    trains with, on the CPU as on CUDA (MONAI's trainer autocasts only on CUDA, and only to fp16 by default)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(*args, **kwargs)
        return type(out)(*(_float(v) for v in out)) if isinstance(out, SegmenterOutput) else _float(out)


class PreparePromptBatch(PrepareBatchExtraInput):
    """``prepare_batch`` of the trainer: ``image`` and ``label`` to the device, ``boxes`` [B, P, 4] (XYXY, model
    pixels) as the network's ``boxes`` keyword and, with ``slice_keys=True``, the batch's ``slice_keys`` (one
    hashable name per image, for :class:`CachedFrontSegmenter`) as its ``slice_keys`` keyword, unchanged; without,
    they are dropped.

    Automatic steps: with probability ``auto_share`` per batch the batch trains the class prompts (a batch's own
    ``auto_step`` entry, when present, decides instead). The draw depends only on ``seed`` and :attr:`step` (the
    trainer's iteration, which :func:`build_trainer` keeps up to date), so a resumed run draws the same steps as
    an uninterrupted one; without a step (standalone use) a generator seeded with ``seed`` draws. The target is
    ``batch[auto_label_key]`` [B, K, S, S] (every class, empty where absent) and the network gets
    ``classes`` [B, K] = 0..K-1 instead of ``boxes``. A batch's ``walk_flag`` [B, P] (bool: the boxes that are a
    walk's, ``SlicePromptsd(walk_flag_key=...)``) goes to the network as its ``walk`` keyword in box steps.

    Interactive steps: with an ``interaction`` whose share is above 0, a box-prompted step may simulate a user
    (:meth:`~monai_cbo.training.interaction.Interaction.draw`, from ``interaction.seed`` and :attr:`step` as
    above): the network then also gets ``interaction``, the step's draw with the batch's label as its target
    (:class:`CachedFrontSegmenter` runs the rounds).

    Raises:
        ValueError: an automatic step on a batch without ``auto_label_key`` (add it with
            ``SlicePromptsd(auto_label_key=...)``), or ``auto_share`` outside [0, 1].
    """

    def __init__(
        self,
        slice_keys: bool = False,
        auto_share: float = 0.0,
        auto_label_key: str = "auto_label",
        seed: int = 0,
        interaction: Interaction | None = None,
    ) -> None:
        super().__init__(extra_keys={"boxes": "boxes", **({"slice_keys": "slice_keys"} if slice_keys else {})})
        self.interaction = interaction
        if not 0.0 <= auto_share <= 1.0:
            raise ValueError(f"auto_share is the share of automatic training steps, in [0, 1]; got {auto_share}")
        self.auto_share, self.auto_label_key, self.seed = float(auto_share), auto_label_key, int(seed)
        self.rng = np.random.default_rng(seed)
        #: the trainer iteration being prepared (set by build_trainer's handler); None: draw from ``rng``
        self.step: int | None = None

    def is_auto(self, batchdata: dict) -> bool:
        """Whether ``batchdata`` is an automatic step (the batch's ``auto_step`` flag, else a seeded draw)."""
        flag = batchdata.get("auto_step")
        if flag is not None:
            return bool(torch.as_tensor(flag).any())
        if self.auto_share <= 0:
            return False
        draw = self.rng.random() if self.step is None else np.random.default_rng([self.seed, self.step]).random()
        return bool(draw < self.auto_share)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any) -> tuple:
        image, label, args, kw = super().__call__(batchdata, device, non_blocking, **kwargs)
        if not self.is_auto(batchdata):
            if WALK_FLAG_KEY in batchdata:  # which boxes are a walk's (the segmenter's walk prompt)
                kw["walk"] = torch.as_tensor(batchdata[WALK_FLAG_KEY]).to(device=device, non_blocking=non_blocking)
            draw = None if self.interaction is None else self.interaction.draw(self.step, self.rng)
            if draw is not None:
                draw.target = label
                kw["interaction"] = draw
            return image, label, args, kw
        if self.auto_label_key not in batchdata:
            raise ValueError(
                f"an automatic training step needs the batch's {self.auto_label_key!r} targets (every class, empty "
                "where absent): build the samples with SlicePromptsd(auto_label_key=...), or set auto_share to 0"
            )
        target = batchdata[self.auto_label_key].to(device=device, non_blocking=non_blocking)
        kw.pop("boxes", None)
        kw["classes"] = torch.arange(target.shape[1], device=target.device).expand(target.shape[0], -1)
        return image, target, args, kw


class CachedFrontSegmenter(nn.Module):
    """``model`` whose frozen encoder front is read from ``cache`` for slices it has seen before, and which runs
    the rounds of an interactive step (:mod:`~monai_cbo.training.interaction`) on the step's own embedding.

    ``forward(image, boxes, slice_keys=None, classes=None, interaction=None, walk=None)``: as
    ``model(image, boxes=boxes, walk=walk)``;
    with ``slice_keys`` (one hashable name per image, the same name for the same pixels) the first
    :func:`frozen_prefix` stages come from :func:`~monai_cbo.networks.cached_front` (computed, without gradients,
    only for misses). With an ``interaction`` draw, the embedding is computed once, the draw's earlier rounds
    decode it without gradients (:func:`~monai_cbo.training.interaction.simulate_rounds`) and the last round's
    prompt is decoded with gradients. A wrapper because the trainer hands the batch's keywords to its network and
    nothing else.

    Args:
        model: the segmenter being trained (its trainable parameters decide the frozen depth, once, here), or its
            ``DistributedDataParallel`` wrapper (then no cache; an interactive step's rounds encode once more
            without gradients, and its trained round goes through the wrapper so that gradients are reduced).
        cache: where the features are kept (a :func:`~monai_cbo.networks.feature_cache`); may be shared by several
            models of the same base weights. None: no cache.

    Raises:
        ValueError: a cache for a wrapped (DDP) model.
    """

    def __init__(self, model: nn.Module, cache: SliceCache | None = None) -> None:
        super().__init__()
        self.model, self.cache = model, cache
        if cache is not None and self.segmenter is not model:
            raise ValueError(
                "a feature cache reads the segmenter's encoder directly, which a DistributedDataParallel wrapper "
                "would not see (its gradients would not be reduced): train without feature_cache under DDP"
            )
        self.depth = frozen_prefix(self.segmenter.image_encoder) if cache is not None else 0

    @property
    def segmenter(self) -> SamSegmenter:
        """The segmenter inside ``model``'s wrappers."""
        return _unwrap(self.model)

    def forward(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        slice_keys: Sequence[Hashable] | None = None,
        classes: torch.Tensor | None = None,
        interaction: InteractionDraw | None = None,
        walk: torch.Tensor | None = None,
    ) -> SegmenterOutput:
        net = self.segmenter
        if interaction is not None and classes is None:
            if net is not self.model:  # DDP: the trained round must pass through the wrapper
                with torch.no_grad():
                    emb = net.encode(image)
                rounds = partial(_decode_masks, net, emb, walk=walk)
                return self.model(image, **simulate_rounds(rounds, boxes, interaction, net.low_res_size), walk=walk)
            emb = self._embed(image, slice_keys)
            rounds = partial(_decode_masks, net, emb.detach(), walk=walk)
            return net.decode(emb, **simulate_rounds(rounds, boxes, interaction, net.low_res_size), walk=walk)
        if not self.depth or slice_keys is None:
            return self.model(image, boxes=boxes, classes=classes, walk=walk)
        return net.decode(self._embed(image, slice_keys), boxes=boxes, classes=classes, walk=walk)

    def _embed(self, image: torch.Tensor, slice_keys: Sequence[Hashable] | None) -> torch.Tensor:
        net = self.segmenter
        if not self.depth or slice_keys is None:
            return net.encode(image)
        return net.encode_stages(cached_front(net, image, slice_keys, self.cache, self.depth), self.depth)


def _decode_masks(net: SamSegmenter, embeddings: torch.Tensor, **prompt: Any) -> torch.Tensor:
    return net.decode(embeddings, **prompt).masks


def build_trainer(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data_loader: Iterable,
    max_epochs: int = 1,
    device: str | torch.device = "cpu",
    amp: bool = False,
    precision: str = "auto",
    loss_function: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    epoch_length: int | None = None,
    handlers: Sequence[Any] = (),
    feature_cache: SliceCache | None = None,
    auto_share: float = 0.0,
    seed: int = 0,
    interaction: Interaction | None = None,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` that runs the one training step (module docstring) over ``train_data_loader``.

    Args:
        network: the segmenter (or its ``DistributedDataParallel`` wrapper), already on ``device``.
        optimizer: from :func:`build_optimizer`.
        train_data_loader: batches ``{"image": [B, 3, S, S], "label": [B, P, S, S], "boxes": [B, P, 4]}``
            (padded prompt slots: label ``IGNORE``), optionally ``"slice_keys"``; a ``DataLoader`` or any
            iterable (then give ``epoch_length``).
        max_epochs: passes over ``train_data_loader``. Default 1.
        device: where batches go.
        amp: CUDA mixed precision (fp16 autocast + gradient scaler); ignored on other devices. Default False.
        precision: ``auto`` (as ``amp`` says on CUDA; on a CPU with native bf16, bf16 as below:
            :data:`~monai_cbo.precision.CPU_AUTO_BF16_TRAINING`), ``fp32`` (no autocast, whatever ``amp`` says),
            ``fp16`` (CUDA's ``amp``), ``bf16`` (the forward pass under bf16 autocast, :class:`AutocastForward`,
            CPU or CUDA; on a CPU without native bf16 it is emulated and slow: :mod:`monai_cbo.precision`).
            Default ``auto``.
        loss_function: default :class:`~monai_cbo.losses.PromptDiceBCELoss` with its default weights.
        epoch_length: steps per epoch. Default ``len(train_data_loader)``.
        handlers: Ignite / MONAI handlers to attach (schedulers, validation, checkpoints, logs).
        feature_cache: reuse frozen encoder features of slices named in the batches' ``slice_keys``
            (:class:`CachedFrontSegmenter`). Default None: no cache.
        auto_share: share of automatic steps (class prompts against ``auto_label``; see
            :class:`PreparePromptBatch`). Default 0: box-prompted steps only. Needs a network with class prompts.
        seed: seeds the draw of automatic steps. Default 0.
        interaction: simulated interaction in a share of the box-prompted steps
            (:mod:`~monai_cbo.training.interaction`). Default None: box prompts only.

    Raises:
        ValueError: ``auto_share > 0`` for a network without class prompts (build it with ``class_names``).
    """
    if auto_share > 0 and class_prompts_of(_unwrap(network)) is None:
        raise ValueError(
            f"auto_share {auto_share} trains class prompts, but the network has none: build it with class_names "
            "(monai_cbo.models.build_segmenter(..., class_names=[...])), or set auto_share to 0"
        )
    device = torch.device(device)
    resolved = resolve_precision(precision, device, training=True)  # checks the name, warns for emulated bf16
    if precision != "auto":
        amp = resolved.name == "fp16"
    interactive = interaction is not None and interaction.share > 0
    record_interaction(network, interaction)
    if feature_cache is not None or interactive:
        network = CachedFrontSegmenter(network, feature_cache)
    if resolved.encoder == torch.bfloat16:  # bf16 asked for, or auto on a CPU with native bf16 (CPU_AUTO_BF16_TRAINING)
        network = AutocastForward(network, device.type)
    prepare = PreparePromptBatch(
        slice_keys=feature_cache is not None,
        auto_share=auto_share,
        seed=seed,
        interaction=interaction if interactive else None,
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_data_loader,
        epoch_length=epoch_length,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function if loss_function is not None else PromptDiceBCELoss(),
        prepare_batch=prepare,
        amp=bool(amp) and device.type == "cuda",
        decollate=False,
        optim_set_to_none=True,
        train_handlers=list(handlers) or None,
    )
    if auto_share > 0 or interactive:  # steps drawn from (seed, iteration): a resumed run draws what it would have

        def _track_step(engine: SupervisedTrainer) -> None:
            prepare.step = engine.state.iteration

        trainer.add_event_handler(Events.ITERATION_STARTED, _track_step)
    return trainer


def train_step(trainer: SupervisedTrainer, batch: dict[str, Any]) -> dict[str, Any]:
    """Run one iteration of ``trainer`` on ``batch`` outside ``trainer.run()`` (no events of the run loop fire):
    what ``monai-cbo speed`` times. Returns the iteration's output (``image``, ``label``, ``pred``, ``loss``)."""
    return trainer._process_function(trainer, batch)
