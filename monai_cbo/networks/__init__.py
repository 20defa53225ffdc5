"""SAM-family model builders and the trainable prompt-driven segmenter."""

from __future__ import annotations

from .builders import MODELS, build_model, load_checkpoint_file
from .segmenter import SamSegmenter, SegmenterOutput

__all__ = ["MODELS", "SamSegmenter", "SegmenterOutput", "build_model", "load_checkpoint_file"]
