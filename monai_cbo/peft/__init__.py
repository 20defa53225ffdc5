"""Parameter-efficient fine-tuning with cross-block orchestration (CBO).

``config`` (PeftConfig, presets), ``layers`` (LoRA-qkv and AdaptFormer wrappers), ``orchestration``
(shared C / S tensors, per-slot quaternion heads), ``inject`` (find blocks, wrap, freeze, count),
``state`` (adapter-only checkpoints).
"""

from __future__ import annotations

from .config import PRESETS, PeftConfig
from .inject import apply_peft, count_parameters, find_attention_blocks, optimizer_param_groups
from .layers import AdapterMLP, LoraQKV, PeftLayer
from .orchestration import CBOSlot, CrossBlockOrchestrator, QuaternionLinear, hamilton_weight
from .state import (
    adapter_class_prompts,
    adapter_interaction,
    adapter_state_dict,
    adapter_walk_prompt,
    load_adapter,
    read_adapter,
    save_adapter,
)

__all__ = [
    "PRESETS",
    "AdapterMLP",
    "CBOSlot",
    "CrossBlockOrchestrator",
    "LoraQKV",
    "PeftConfig",
    "PeftLayer",
    "QuaternionLinear",
    "adapter_class_prompts",
    "adapter_walk_prompt",
    "adapter_interaction",
    "adapter_state_dict",
    "apply_peft",
    "count_parameters",
    "find_attention_blocks",
    "hamilton_weight",
    "load_adapter",
    "optimizer_param_groups",
    "read_adapter",
    "save_adapter",
]
