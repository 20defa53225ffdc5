"""The image encoder as a sequence of stages, so that its frozen front can be computed once and reused.

A PEFT preset trains modules inside the encoder's attention blocks; everything before the first of them
(TinyViT's patch embedding and convolutional first stage, SAM ViT's patch embedding) computes the same
features for the same image in every epoch and in every preset. :func:`encoder_stages` exposes that split and
:func:`frozen_prefix` says how far it reaches for a given model; :class:`FeatureCache` keeps the results.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

__all__ = ["FeatureCache", "encoder_stages", "frozen_prefix", "run_stages"]

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


class FeatureCache:
    """Features by key (e.g. ``(case, slice)``), kept on the CPU up to ``max_mib``; beyond that, not stored.

    The caller decides what is safe to cache: outputs of :func:`frozen_prefix` stages of an unchanged base
    model for an unchanged input. Keys should include the stage depth when several depths share a cache.
    """

    def __init__(self, max_mib: float = 4096.0) -> None:
        self.max_bytes = int(max_mib * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self._store: dict[Hashable, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def get_many(
        self, keys: Sequence[Hashable], compute: Callable[[list[int]], torch.Tensor], device: torch.device | str
    ) -> torch.Tensor:
        """Stack the features of ``keys`` on ``device``; ``compute(indices)`` makes the missing ones (a batch)."""
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            out = compute(missing).detach()
            for j, i in enumerate(missing):
                fresh[keys[i]] = out[j]
                size = out[j].numel() * out[j].element_size()
                if self.bytes + size <= self.max_bytes:
                    self._store[keys[i]] = out[j].to("cpu", copy=True)
                    self.bytes += size
        return torch.stack([fresh[k] if k in fresh else self._store[k].to(device) for k in keys])
