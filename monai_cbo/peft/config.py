"""PEFT configuration: which method, how wide, whether cross-block orchestration is on, what trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..utils import check_option

__all__ = ["ABLATION_PRESETS", "PRESETS", "PeftConfig"]

METHODS = ("lora", "adapter")
LORA_B_INITS = ("zeros", "xavier")
HEAD_INITS = ("uniform", "orthogonal")
DEFAULT_RANK = {"lora": 4, "adapter": 16}

#: Named presets: the rows of the benchmark table (METHOD.md, "Ablation presets").
PRESETS: dict[str, dict[str, Any]] = {
    "freeze": {"method": None, "cbo": False, "train_decoder": False},
    "decoder_only": {"method": None, "cbo": False, "train_decoder": True},
    "lora": {"method": "lora", "cbo": False, "train_decoder": True},
    "lora_cbo": {"method": "lora", "cbo": True, "train_decoder": True},
    "adapter": {"method": "adapter", "cbo": False, "train_decoder": True},
    "adapter_cbo": {"method": "adapter", "cbo": True, "train_decoder": True},
    "full": {"method": None, "cbo": False, "train_decoder": True, "train_encoder": True, "train_prompt_encoder": True},
}

#: The presets a benchmark compares by default (``monai-cbo bench``): every row of the table but ``full``.
ABLATION_PRESETS = ("freeze", "decoder_only", "lora", "lora_cbo", "adapter", "adapter_cbo")


@dataclass
class PeftConfig:
    """How the SAM image encoder is adapted and which parts train.

    Args:
        preset: name of the preset this config came from (recorded in checkpoints), or ``"custom"``.
        method: ``"lora"`` (rank-r update on q and v of every attention ``qkv``), ``"adapter"``
            (AdaptFormer bottleneck parallel to every block's MLP), or ``None`` (no encoder PEFT).
        rank: LoRA rank / adapter bottleneck width V, the same in every slot. Defaults to 4 for LoRA and
            16 for the adapter. With ``cbo`` it must be a multiple of 4 (quaternion heads).
        cbo: add cross-block orchestration (shared C and S, per-slot gamma and quaternion head).
        blocks: indices (in encoder order, counting attention blocks only) of the blocks to adapt; ``None``
            adapts every block.
        lora_b_init: ``"zeros"`` (default: the model equals the pretrained one at step 0) or ``"xavier"``
            (the authors' code).
        head_init: quaternion head init, ``"uniform"`` (authors' code: r = 0, i, j, k ~ U[0, 1)) or
            ``"orthogonal"``.
        cbo_lr_mult: learning-rate multiplier of the CBO parameter group (C, S, gamma, heads). Default 100.
        adapter_scale: AdaptFormer output scale. Default 1.0.
        adapter_dropout: AdaptFormer dropout after the ReLU. Default 0.1.
        train_decoder: train the mask decoder.
        train_encoder: train every image-encoder weight (full fine-tuning).
        train_prompt_encoder: train the prompt encoder.
    """

    preset: str = "custom"
    method: str | None = "lora"
    rank: int | None = None
    cbo: bool = True
    blocks: list[int] | None = None
    lora_b_init: str = "zeros"
    head_init: str = "uniform"
    cbo_lr_mult: float = 100.0
    adapter_scale: float = 1.0
    adapter_dropout: float = 0.1
    train_decoder: bool = True
    train_encoder: bool = False
    train_prompt_encoder: bool = False

    def __post_init__(self) -> None:
        if self.method is not None:
            check_option("PEFT method", self.method, METHODS)
        check_option("lora_b_init", self.lora_b_init, LORA_B_INITS)
        check_option("head_init", self.head_init, HEAD_INITS)
        if self.method is None:
            if self.cbo:
                raise ValueError("cbo=True needs a PEFT method ('lora' or 'adapter'); set method or cbo=False")
            self.rank = None
        else:
            if self.rank is None:
                self.rank = DEFAULT_RANK[self.method]
            if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
                raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
            if self.cbo and self.rank % 4:
                raise ValueError(
                    f"rank {self.rank} is not a multiple of 4: the CBO quaternion head splits the V x V "
                    "weight into 4 x 4 blocks; use a rank divisible by 4 (e.g. 4, 8, 16)"
                )
        if self.blocks is not None:
            self.blocks = sorted({int(b) for b in self.blocks})
        if self.cbo_lr_mult <= 0:
            raise ValueError(f"cbo_lr_mult must be > 0, got {self.cbo_lr_mult}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PeftConfig:
        """Build the config of a named preset (see :data:`PRESETS`); ``overrides`` set other fields.

        ``rank=None`` in overrides is ignored, so callers can pass an optional command-line value through.
        """
        check_option("preset", name, PRESETS)
        overrides = {k: v for k, v in overrides.items() if not (k == "rank" and v is None)}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown PeftConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(preset=name, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PeftConfig field(s) {unknown} in saved config; known: {sorted(known)}")
        return cls(**data)
