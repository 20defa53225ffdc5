"""Dice + BCE on per-prompt mask logits, skipping padded prompt slots."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks.segmenter import SegmenterOutput
from .transforms.training import IGNORE

__all__ = ["PromptDiceBCELoss"]


class PromptDiceBCELoss(nn.Module):
    """``dice_weight * soft Dice + bce_weight * BCE`` over the valid prompts of a batch.

    Args:
        dice_weight, bce_weight: term weights. Default 1 and 1.
        smooth: Dice smoothing. Default 1e-5.

    ``forward(pred, target)``: ``pred`` is a :class:`~monai_cbo.networks.SegmenterOutput` (or its mask logits)
    ``[B, P, 1, S, S]``; ``target`` is ``[B, P, S, S]`` in {0, 1}, with padded slots filled with ``IGNORE``.
    Dice is computed per prompt with a non-empty target and averaged (an empty target - a class prompt on a
    slice without the class - has no overlap to score; BCE alone pushes its mask to empty); BCE is averaged over
    every valid prompt. A batch without any valid prompt gives a zero loss that still depends on the logits, so
    the optimiser step is a no-op rather than an error.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth

    def forward(self, pred: SegmenterOutput | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = pred.masks if isinstance(pred, SegmenterOutput) else pred
        logits = logits.float().flatten(0, 1).flatten(1)  # [B * P, S * S] (mask channel 1)
        target = target.float().flatten(0, 1).flatten(1)
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} disagree (flattened)")
        valid = (target != IGNORE).all(dim=1)
        if not valid.any():
            return logits.sum() * 0.0
        logits, target = logits[valid], target[valid]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1).mean()
        present = target.sum(1) > 0
        if not present.any():
            return self.bce_weight * bce + logits.sum() * 0.0
        prob = torch.sigmoid(logits[present])
        inter = (prob * target[present]).sum(1)
        dice = 1 - (2 * inter + self.smooth) / (prob.sum(1) + target[present].sum(1) + self.smooth)
        return self.dice_weight * dice.mean() + self.bce_weight * bce
