"""The image encoder as a sequence of stages, so that its frozen front can be computed once and reused.

A PEFT preset trains modules inside the encoder's attention blocks; everything before the first of them
(TinyViT's patch embedding and convolutional first stage, SAM ViT's patch embedding) computes the same
features for the same image in every epoch and in every preset. :func:`encoder_stages` exposes that split and
:func:`frozen_prefix` says how far it reaches for a given model; :func:`cached_front` keeps the results in a
:func:`feature_cache`, for training and evaluation alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

from .cache import SliceCache

__all__ = ["cached_front", "encoder_stages", "feature_cache", "frozen_prefix", "run_stages"]

Stage = Callable[[torch.Tensor], torch.Tensor]


def _tinyvit_stages(encoder: nn.Module) -> list[tuple[Stage, list[nn.Module]]]:
    def neck(x: torch.Tensor) -> torch.Tensor:  # as TinyViT.forward_features: tokens -> 64 x 64 grid -> neck
        b, _, c = x.shape
        return encoder.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2))

    stages = [(encoder.patch_embed, [encoder.patch_embed])]
    stages += [(layer, [layer]) for layer in encoder.layers]
    return [*stages, (neck, [encoder.neck])]


def _vit_stages(encoder: nn.Module) -> list[tuple[Stage, list[nn.Module]]]:
    def embed(x: torch.Tensor) -> torch.Tensor:  # as ImageEncoderViT.forward
        x = encoder.patch_embed(x)
        return x if encoder.pos_embed is None else x + encoder.pos_embed

    def neck(x: torch.Tensor) -> torch.Tensor:
        return encoder.neck(x.permute(0, 3, 1, 2))

    owners = [encoder.patch_embed] + ([] if encoder.pos_embed is None else [encoder.pos_embed])
    return [(embed, owners), *((blk, [blk]) for blk in encoder.blocks), (neck, [encoder.neck])]


def encoder_stages(encoder: nn.Module) -> list[tuple[Stage, list[nn.Module | nn.Parameter]]]:
    """``[(stage, owners), ...]`` such that applying the stages in order equals ``encoder(x)``; ``owners`` are the
    modules / parameters each stage computes with (to tell whether it trains).

    Raises:
        ValueError: an encoder of unknown structure (neither TinyViT nor segment-anything's ViT).
    """
    if hasattr(encoder, "layers") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):
        return _tinyvit_stages(encoder)
    if hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):
        return _vit_stages(encoder)
    raise ValueError(f"cannot split a {type(encoder).__name__} into stages; expected TinyViT or SAM's ImageEncoderViT")


def _trains(owner: nn.Module | nn.Parameter) -> bool:
    if isinstance(owner, nn.Parameter):
        return owner.requires_grad
    if any(p.requires_grad for p in owner.parameters()):
        return True
    # a layer in training mode whose output is random or batch-dependent is not reusable either (each layer's own
    # mode: SamSegmenter.train keeps frozen batch norms and a frozen module's dropout in evaluation mode)
    return any(
        (isinstance(m, nn.Dropout) and m.p > 0 or isinstance(m, nn.modules.batchnorm._BatchNorm)) and m.training
        for m in owner.modules()
    )


def frozen_prefix(encoder: nn.Module) -> int:
    """How many leading stages of :func:`encoder_stages` compute the same output for the same input every time:
    no trainable parameter, no dropout or batch statistics in use. ``len(stages)`` means the whole encoder."""
    count = 0
    for _, owners in encoder_stages(encoder):
        if any(_trains(o) for o in owners):
            break
        count += 1
    return count


def run_stages(encoder: nn.Module, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Apply stages ``start:stop`` of :func:`encoder_stages` to ``x``."""
    for stage, _ in encoder_stages(encoder)[start:stop]:
        x = stage(x)
    return x


def feature_cache(max_mib: float = 4096.0) -> SliceCache:
    """A :class:`~monai_cbo.networks.SliceCache` for :func:`cached_front`: entries on the CPU (the GPU's memory is
    the model's), and when full new entries are not stored (training visits its slices in passes, which a least
    recently used bound smaller than a pass would never hit)."""
    return SliceCache(max_mib, when_full="keep", store_on="cpu")


def cached_front(
    model: nn.Module, images: torch.Tensor, keys: Sequence[Hashable], cache: SliceCache, depth: int
) -> torch.Tensor:
    """Encoder stages ``0:depth`` of ``model`` (a :class:`~monai_cbo.networks.SamSegmenter`: its frozen front,
    :func:`frozen_prefix`) for ``images``
    [B, 3, S, S]: each image's from ``cache`` under ``(*key, depth)`` (``key`` a tuple, else ``(key, depth)``)
    where stored, the missing ones computed as one batch without gradients and stored.

    The caller decides what is safe to cache: ``depth`` at most :func:`frozen_prefix` of an unchanged base model,
    and the same key for the same pixels. Finish the embedding with ``model.encode_stages(front, depth)``.
    """
    keys = [(*key, depth) if isinstance(key, tuple) else (key, depth) for key in keys]
    with torch.no_grad():
        return cache.get_many(keys, lambda idx: model.encode_stages(images[idx], 0, depth), images.device)
