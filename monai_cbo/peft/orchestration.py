"""Cross-block orchestration (CBO): the shared relation tensors and the per-slot quaternion head.

A *slot* is one low-rank path (LoRA on q, LoRA on v, or one AdaptFormer adapter). With T slots over the
encoder and width V:

* ``C`` (1 x V x T, ones) and ``S`` (T x T, identity) are shared by every slot. ``C @ S`` is computed once
  per encoder forward; slot t reads column t, a learned mix of every slot's coefficient vector.
* each slot keeps its own ``gamma_t`` (V, ones) and a V x V quaternion head ``H_t``.
* slot t maps its low-rank activation ``h`` to ``H_t(h * (mix[:, t] + gamma_t))``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils import check_option

__all__ = ["CBOSlot", "CrossBlockOrchestrator", "QuaternionLinear", "hamilton_weight"]

# Hamilton-product rules: W[row][col] = sign * component, components ordered (r, i, j, k).
_HAMILTON = (
    ((+1, 0), (+1, 1), (+1, 2), (+1, 3)),
    ((-1, 1), (+1, 0), (+1, 3), (-1, 2)),
    ((-1, 2), (-1, 3), (+1, 0), (+1, 1)),
    ((-1, 3), (+1, 2), (-1, 1), (+1, 0)),
)


def hamilton_weight(r: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Assemble the 4n x 4n quaternion weight from four n x n components.

    ``W = [[r, i, j, k], [-i, r, k, -j], [-j, -k, r, i], [-k, j, -i, r]]``; a layer computes ``y = x @ W``.
    """
    parts = (r, i, j, k)
    return torch.cat([torch.cat([s * parts[c] for s, c in row], dim=1) for row in _HAMILTON], dim=0)


class QuaternionLinear(nn.Module):
    """A V x V bias-free linear map whose weight is a quaternion (hypercomplex, n = 4) matrix.

    It holds 4 (V/4)^2 parameters instead of V^2.

    Args:
        features: V, a multiple of 4.
        init: ``"uniform"`` (the authors' code: r = 0 and i, j, k ~ U[0, 1)) or ``"orthogonal"``
            (a random unit quaternion times a random orthogonal (V/4)^2 matrix: W is orthogonal).
    """

    def __init__(self, features: int, init: str = "uniform") -> None:
        super().__init__()
        if features < 4 or features % 4:
            raise ValueError(
                f"quaternion head width must be a positive multiple of 4, got {features}; "
                "choose a rank / adapter width divisible by 4"
            )
        check_option("head_init", init, ("uniform", "orthogonal"))
        n = features // 4
        self.features = features
        self.r = nn.Parameter(torch.zeros(n, n))
        self.i = nn.Parameter(torch.zeros(n, n))
        self.j = nn.Parameter(torch.zeros(n, n))
        self.k = nn.Parameter(torch.zeros(n, n))
        with torch.no_grad():
            if init == "uniform":
                for p in (self.i, self.j, self.k):
                    p.uniform_(0.0, 1.0)
            else:
                q = torch.randn(4)
                q = q / q.norm()
                basis = torch.empty(n, n)
                nn.init.orthogonal_(basis)
                for coef, p in zip(q, (self.r, self.i, self.j, self.k), strict=True):
                    p.copy_(coef * basis)

    def weight(self) -> torch.Tensor:
        return hamilton_weight(self.r, self.i, self.j, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}"


class CrossBlockOrchestrator(nn.Module):
    """The shared coefficient tensor ``C`` (1 x V x T) and relation matrix ``S`` (T x T).

    ``mix()`` returns ``(C @ S)[0]`` of shape (V, T). Between :meth:`begin` and :meth:`end` (the encoder's
    forward pre- and post-hooks) it is computed once and shared by every slot; outside them it is
    computed on demand, so a slot used on its own is still correct.
    """

    def __init__(self, num_slots: int, rank: int) -> None:
        super().__init__()
        if num_slots < 1:
            raise ValueError(f"cross-block orchestration needs at least one slot, got {num_slots}")
        self.num_slots = num_slots
        self.rank = rank
        self.C = nn.Parameter(torch.ones(1, rank, num_slots))
        self.S = nn.Parameter(torch.eye(num_slots))
        self._mix: torch.Tensor | None = None

    def compute(self) -> torch.Tensor:
        return (self.C @ self.S)[0]

    def begin(self, *_args) -> None:
        self._mix = self.compute()

    def end(self, *_args) -> None:
        self._mix = None

    def mix(self) -> torch.Tensor:
        return self.compute() if self._mix is None else self._mix

    def extra_repr(self) -> str:
        return f"num_slots={self.num_slots}, rank={self.rank}"


class CBOSlot(nn.Module):
    """Slot ``index``'s view of the orchestrator: ``h -> H(h * (mix[:, index] + gamma))``.

    The orchestrator is held by reference (it is registered once, on the encoder), the way peft's VeRA
    shares its projection matrices: its parameters appear once in ``state_dict`` and ``parameters()``.
    """

    def __init__(self, orchestrator: CrossBlockOrchestrator, index: int, head_init: str = "uniform") -> None:
        super().__init__()
        if not 0 <= index < orchestrator.num_slots:
            raise ValueError(f"slot index {index} outside 0..{orchestrator.num_slots - 1}")
        self._orchestrator = (orchestrator,)  # a tuple keeps it out of this module's children
        self.index = index
        self.gamma = nn.Parameter(torch.ones(orchestrator.rank))
        self.head = QuaternionLinear(orchestrator.rank, head_init)

    @property
    def orchestrator(self) -> CrossBlockOrchestrator:
        return self._orchestrator[0]

    def matrix(self) -> torch.Tensor:
        """The slot as one V x V matrix M, ``slot(h) = h @ M``: ``diag(mix[:, t] + gamma) @ W_head``.

        Folding the scaling into the head keeps the per-token cost to one small matmul, and lets a
        following linear layer absorb M entirely (see :class:`~monai_cbo.peft.layers.LoraQKV`).
        """
        coef = self.orchestrator.mix()[:, self.index] + self.gamma
        return coef.unsqueeze(1) * self.head.weight()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.matrix().to(h.dtype)

    def extra_repr(self) -> str:
        return f"index={self.index}"
