"""Ignite handlers the bundles attach: checkpoints (best adapter, resumable state) and evaluation outputs."""

from __future__ import annotations

from .checkpoints import BestAdapterSaver, TrainingStateCheckpoint
from .evaluation import CaseMetricsWriter, LabelMapWriter
from .progress import EpochProgressBar

__all__ = [
    "BestAdapterSaver",
    "CaseMetricsWriter",
    "EpochProgressBar",
    "LabelMapWriter",
    "TrainingStateCheckpoint",
]
