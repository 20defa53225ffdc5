"""SAM-family model builders and the trainable prompt-driven segmenter."""

from __future__ import annotations

from .builders import MODELS, build_model, load_checkpoint_file
from .class_prompts import ClassPrompts, add_class_prompts, class_prompts_of
from .ensemble import SegmenterEnsemble
from .segmenter import SamSegmenter, SegmenterOutput
from .stages import FeatureCache, encoder_stages, frozen_prefix, run_stages

__all__ = [
    "MODELS",
    "ClassPrompts",
    "FeatureCache",
    "SamSegmenter",
    "SegmenterEnsemble",
    "SegmenterOutput",
    "add_class_prompts",
    "build_model",
    "class_prompts_of",
    "encoder_stages",
    "frozen_prefix",
    "load_checkpoint_file",
    "run_stages",
]
