"""PEFT wrappers: LoRA on a fused qkv linear, and an AdaptFormer adapter beside an MLP.

Each wrapper keeps the original module as ``base_layer`` (frozen by injection) and adds its delta. A
low-rank path is ``up(slot(down(x)))``; ``slot`` is a :class:`~monai_cbo.peft.orchestration.CBOSlot`
with cross-block orchestration, or the identity without it (plain LoRA / AdaptFormer).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_option
from .config import LORA_B_INITS
from .orchestration import CBOSlot

__all__ = ["AdapterMLP", "LoraQKV", "PeftLayer"]


def _init_up(layer: nn.Linear, init: str) -> None:
    """Initialise an up projection: zeros (the wrapped model equals the pretrained one) or xavier."""
    check_option("lora_b_init", init, LORA_B_INITS)
    if init == "zeros":
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class PeftLayer(nn.Module):
    """Base of the wrappers: ``base_layer`` is the original module, everything else is the adaptation."""

    base_layer: nn.Module

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters added by the wrapper (low-rank paths and CBO slots), not the base layer's."""
        base = {id(p) for p in self.base_layer.parameters()}
        return (p for p in self.parameters() if id(p) not in base)


class LoraQKV(PeftLayer):
    """LoRA on the q and v parts of a fused qkv projection; k is untouched.

    ``out = base(x)``, then ``out[..., q_index] += B_q(slot_q(A_q x))`` and likewise for v. The index
    vectors say where q and v sit in the fused output: SAM's ViT lays it out as ``[q | k | v]``, TinyViT
    interleaves ``[q_h | k_h | v_h]`` per head.

    Args:
        base_layer: the fused qkv ``nn.Linear``.
        q_index, v_index: output positions of q and of v in ``base_layer``'s output.
        rank: r.
        slot_q, slot_v: CBO slots of the two paths, or ``None`` for plain LoRA.
        b_init: ``"zeros"`` or ``"xavier"`` init of B.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        q_index: torch.Tensor,
        v_index: torch.Tensor,
        rank: int,
        slot_q: nn.Module | None = None,
        slot_v: nn.Module | None = None,
        b_init: str = "zeros",
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear qkv projection, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        d_in = base_layer.in_features
        self.lora_A_q = nn.Linear(d_in, rank, bias=False)
        self.lora_B_q = nn.Linear(rank, len(q_index), bias=False)
        self.lora_A_v = nn.Linear(d_in, rank, bias=False)
        self.lora_B_v = nn.Linear(rank, len(v_index), bias=False)
        self.slot_q = slot_q if slot_q is not None else nn.Identity()
        self.slot_v = slot_v if slot_v is not None else nn.Identity()
        for up in (self.lora_B_q, self.lora_B_v):
            _init_up(up, b_init)
        self.register_buffer("q_index", torch.as_tensor(q_index, dtype=torch.long), persistent=False)
        self.register_buffer("v_index", torch.as_tensor(v_index, dtype=torch.long), persistent=False)

    @staticmethod
    def _path(x: torch.Tensor, down: nn.Linear, slot: nn.Module, up: nn.Linear) -> torch.Tensor:
        h = down(x)
        if isinstance(slot, CBOSlot):  # B(h @ M) = h @ (B M^T)^T: the CBO slot costs no per-token work
            return F.linear(h, up.weight @ slot.matrix().to(up.weight.dtype).T)
        return up(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        dq = self._path(x, self.lora_A_q, self.slot_q, self.lora_B_q)
        dv = self._path(x, self.lora_A_v, self.slot_v, self.lora_B_v)
        out = out.index_add(-1, self.q_index, dq.to(out.dtype))
        return out.index_add(-1, self.v_index, dv.to(out.dtype))


class AdapterMLP(PeftLayer):
    """AdaptFormer: a bottleneck adapter in parallel with an MLP, added to the MLP's output.

    ``out = mlp(x) + scale * up(dropout(relu(slot(down(LN(x))))))``; the adapter sees the MLP's input.

    Args:
        base_layer: the block's MLP.
        dim: its input / output width d.
        width: bottleneck width V.
        slot: CBO slot, or ``None`` for plain AdaptFormer.
        scale: output scale (1.0).
        dropout: dropout after the ReLU (0.1).
        up_init: ``"zeros"`` (default, output equals the MLP's at step 0) or ``"xavier"``.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        dim: int,
        width: int,
        slot: nn.Module | None = None,
        scale: float = 1.0,
        dropout: float = 0.1,
        up_init: str = "zeros",
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_norm = nn.LayerNorm(dim)
        self.adapter_down = nn.Linear(dim, width)
        nn.init.zeros_(self.adapter_down.bias)
        self.slot = slot if slot is not None else nn.Identity()
        self.adapter_act = nn.ReLU()
        self.adapter_drop = nn.Dropout(dropout)
        self.adapter_up = nn.Linear(width, dim)
        _init_up(self.adapter_up, up_init)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.slot(self.adapter_down(self.adapter_norm(x)))
        delta = self.adapter_up(self.adapter_drop(self.adapter_act(h))) * self.scale
        out = self.base_layer(x)
        return out + delta.to(out.dtype)
