"""Slice-wise prompted inference over volumes: prompt sources, the inferer, volume I/O, case runners."""

from __future__ import annotations

from .prompts import PromptSpec, prompts_from_label, prompts_from_spec, read_prompt_file, spec_from_boxes
from .segment import Case, CaseResult, KeyPrompt, find_cases, segment_case, segment_cases
from .slicewise import Prompt2D, SliceResult, SliceWiseInferer, mask_box
from .volume import Preprocess, SliceGeometry, case_name, load_volume, prepare_volume, save_label_map

__all__ = [
    "Case",
    "CaseResult",
    "KeyPrompt",
    "Preprocess",
    "Prompt2D",
    "PromptSpec",
    "SliceGeometry",
    "SliceResult",
    "SliceWiseInferer",
    "case_name",
    "find_cases",
    "load_volume",
    "mask_box",
    "prepare_volume",
    "prompts_from_label",
    "prompts_from_spec",
    "read_prompt_file",
    "save_label_map",
    "segment_case",
    "segment_cases",
    "spec_from_boxes",
]
