"""Several trained segmenters as one: each encodes and decodes every slice, their probabilities are averaged.

An ensemble of adapters (for example the two CBO presets trained on the same data) is a drop-in
:class:`~monai_cbo.networks.SamSegmenter` for inference: :class:`~monai_cbo.inferers.SliceWiseInferer`, the
embedding cache, prompting, propagation and automatic segmentation all run on it unchanged.

- :meth:`SegmenterEnsemble.encode` stacks the members' embeddings, ``[B, M, C, h, w]``, so one cached entry per
  slice holds every member's (M times the memory of one model's);
- :meth:`SegmenterEnsemble.decode` gives each member the same prompts on its own embedding and returns, per
  prompt, the logit of the members' **mean probability** (so a sigmoid downstream yields the mean probability,
  the usual mean ensemble) and the mean of their IoU estimates.

The members must share the input size and, for automatic segmentation, the same learned classes (names, label
values, exclusivity); this is checked when the ensemble is built. It is an inference object: it does not train.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .class_prompts import class_prompts_of
from .segmenter import SamSegmenter, SegmenterOutput

__all__ = ["SegmenterEnsemble"]

#: probabilities are clamped to [EPS, 1 - EPS] before the logit, so a unanimous 0 or 1 stays finite
EPS = 1e-6


def _classes(model: SamSegmenter) -> tuple | None:
    spec = class_prompts_of(model)
    if spec is None:
        return None
    return tuple(spec.class_names), tuple(spec.class_values), bool(spec.exclusive)


class SegmenterEnsemble(nn.Module):
    """Mean-probability ensemble of trained segmenters (see the module docstring).

    Args:
        members: two or more segmenters, each with its adapter loaded (one is accepted: it then behaves as
            that model). ``names`` label them in error messages (default ``member 1``, ``member 2``, ...).

    Raises:
        ValueError: no member, members with different input sizes or mask resolutions, or with different
            learned classes.
    """

    def __init__(self, members: Sequence[SamSegmenter], names: Sequence[str] | None = None) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        names = list(names) if names is not None else [f"member {i + 1}" for i in range(len(members))]
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names for {len(members)} ensemble members")
        first = members[0]
        for name, model in zip(names[1:], members[1:], strict=True):
            if (model.img_size, model.low_res_size) != (first.img_size, first.low_res_size):
                raise ValueError(
                    f"{name} takes {model.img_size}-pixel inputs with {model.low_res_size}-pixel masks but {names[0]} "
                    f"takes {first.img_size} / {first.low_res_size}: ensemble models of the same family "
                    "(for example adapters of one base model)"
                )
            if _classes(model) != _classes(first):
                raise ValueError(
                    f"{name} has classes {_describe(model)} but {names[0]} has {_describe(first)}: an ensemble's "
                    "members must be trained for the same classes (same names, label values and order)"
                )
        self.members = nn.ModuleList(members)
        self.img_size = first.img_size
        self.model_name = first.model_name

    @property
    def low_res_size(self) -> int:
        return self.members[0].low_res_size

    @property
    def class_prompts(self):
        """The first member's class prompts (every member's have the same names, values and exclusivity)."""
        return self.members[0].class_prompts

    def train(self, mode: bool = True) -> SegmenterEnsemble:
        if mode:
            raise RuntimeError("a SegmenterEnsemble is for inference; train each member on its own")
        return super().train(False)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Every member's embeddings of images [B, 3, S, S], stacked as [B, M, C, h, w]."""
        return torch.stack([m.encode(image) for m in self.members], dim=1)

    def decode(self, embeddings: torch.Tensor, **prompts) -> SegmenterOutput:
        """Decode ``prompts`` (as :meth:`SamSegmenter.decode`) with every member on its own embeddings
        ``embeddings[:, m]`` and average: masks are the logits of the mean probability, IoU the mean estimate."""
        if embeddings.ndim != 5 or embeddings.shape[1] != len(self.members):
            raise ValueError(
                f"an ensemble of {len(self.members)} decodes embeddings [B, {len(self.members)}, C, h, w] from its own "
                f"encode, got {list(embeddings.shape)}"
            )
        outs = [m.decode(embeddings[:, i], **prompts) for i, m in enumerate(self.members)]
        if isinstance(outs[0].masks, list):  # prompts given per image as lists
            masks = [_mean_logit([o.masks[b] for o in outs]) for b in range(len(outs[0].masks))]
            ious = [torch.stack([o.iou[b].float() for o in outs]).mean(0) for b in range(len(outs[0].iou))]
            return SegmenterOutput(masks, ious)
        return SegmenterOutput(_mean_logit([o.masks for o in outs]), torch.stack([o.iou.float() for o in outs]).mean(0))


def _mean_logit(logits: list[torch.Tensor]) -> torch.Tensor:
    prob = torch.stack([torch.sigmoid(x.float()) for x in logits]).mean(0)
    return torch.logit(prob.clamp(EPS, 1 - EPS))


def _describe(model: SamSegmenter) -> str:
    spec = _classes(model)
    if spec is None:
        return "none (no class prompts)"
    return ", ".join(f"{n}={v}" for n, v in zip(spec[0], spec[1], strict=True))
