"""SAM-family model builders and the trainable prompt-driven segmenter."""

from __future__ import annotations

from .builders import MODELS, build_model, load_checkpoint_file
from .segmenter import SamSegmenter, SegmenterOutput
from .stages import FeatureCache, encoder_stages, frozen_prefix, run_stages

__all__ = [
    "MODELS",
    "FeatureCache",
    "SamSegmenter",
    "SegmenterOutput",
    "build_model",
    "encoder_stages",
    "frozen_prefix",
    "load_checkpoint_file",
    "run_stages",
]
