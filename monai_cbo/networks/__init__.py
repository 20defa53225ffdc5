"""SAM-family model builders and the trainable prompt-driven segmenter."""

from __future__ import annotations

from .builders import MODELS, build_model, load_checkpoint_file
from .cache import SliceCache
from .class_prompts import ClassPrompts, add_class_prompts, class_prompts_of
from .ensemble import SegmenterEnsemble
from .segmenter import TRAINED_INTERACTION, SamSegmenter, SegmenterOutput, trained_with_clicks
from .stages import cached_front, encoder_stages, feature_cache, frozen_prefix, run_stages
from .walk_prompt import WalkPrompt, add_walk_prompt, walk_prompt_of

__all__ = [
    "MODELS",
    "TRAINED_INTERACTION",
    "ClassPrompts",
    "SamSegmenter",
    "SegmenterEnsemble",
    "SegmenterOutput",
    "SliceCache",
    "WalkPrompt",
    "add_class_prompts",
    "add_walk_prompt",
    "build_model",
    "cached_front",
    "class_prompts_of",
    "encoder_stages",
    "feature_cache",
    "frozen_prefix",
    "load_checkpoint_file",
    "run_stages",
    "trained_with_clicks",
    "walk_prompt_of",
]
