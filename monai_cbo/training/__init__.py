"""Training: the one trainer factory and training step that the bundles, ``monai-cbo bench`` and
``monai-cbo speed`` share (see :mod:`monai_cbo.training.trainer`)."""

from __future__ import annotations

from .interaction import Interaction, InteractionDraw, error_click, simulate_rounds
from .trainer import (
    WALK_FLAG_KEY,
    AutocastForward,
    CachedFrontSegmenter,
    PreparePromptBatch,
    build_optimizer,
    build_trainer,
    record_interaction,
    train_step,
    trainer_precision,
)

__all__ = [
    "WALK_FLAG_KEY",
    "AutocastForward",
    "CachedFrontSegmenter",
    "Interaction",
    "InteractionDraw",
    "PreparePromptBatch",
    "build_optimizer",
    "build_trainer",
    "error_click",
    "record_interaction",
    "simulate_rounds",
    "train_step",
    "trainer_precision",
]
