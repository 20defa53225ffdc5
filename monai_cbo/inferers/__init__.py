"""Slice-wise prompted inference over volumes: prompt sources, the inferer, propagation, volume I/O, case runners."""

from __future__ import annotations

from .automatic import AutoConfig, segment_automatic
from .prompts import (
    PromptSpec,
    VolumePrompts,
    prompts_from_label,
    prompts_from_spec,
    read_prompt_file,
    spec_from_boxes,
)
from .propagation import KeyBox, ObjectPrompt, PropagationConfig, propagate
from .segment import (
    Case,
    CaseResult,
    KeyPrompt,
    VolumeSegmentation,
    check_label,
    find_cases,
    segment_case,
    segment_cases,
    segment_volume,
)
from .slicewise import Prompt2D, SliceResult, SliceWiseInferer, mask_box
from .volume import Preprocess, SliceGeometry, case_name, load_volume, prepare_volume, save_label_map

__all__ = [
    "AutoConfig",
    "Case",
    "CaseResult",
    "KeyBox",
    "KeyPrompt",
    "ObjectPrompt",
    "Preprocess",
    "Prompt2D",
    "PromptSpec",
    "PropagationConfig",
    "SliceGeometry",
    "SliceResult",
    "SliceWiseInferer",
    "VolumePrompts",
    "VolumeSegmentation",
    "case_name",
    "check_label",
    "find_cases",
    "load_volume",
    "mask_box",
    "prepare_volume",
    "propagate",
    "prompts_from_label",
    "prompts_from_spec",
    "read_prompt_file",
    "save_label_map",
    "segment_automatic",
    "segment_case",
    "segment_cases",
    "segment_volume",
    "spec_from_boxes",
]
