"""monai_cbo: Segment Anything for 3D medical volumes with cross-block orchestration (CBO) PEFT.

Subpackages:
    networks   SAM-family model builders and the trainable prompt-driven segmenter.
    peft       LoRA / AdaptFormer with cross-block orchestration: config, layers, injection, state.
    transforms Volumetric MONAI transforms (modality presets, volume -> slices, prompts, resize/pad).
    inferers   Slice-wise prompted inference over volumes.
"""

from __future__ import annotations

__version__ = "0.1.0"
