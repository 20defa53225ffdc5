"""The walk prompt: what tells an adapter that a box came from a propagation walk, not from the user.

A one-key-box walk prompts each slice with the box of its neighbour's mask, grown by a margin
(:class:`~monai_cbo.inferers.PropagationConfig`): a looser box, around a structure that has moved, than the tight
box a user draws. Training an adapter on such boxes (``Recipe.walk_boxes``) lifted one key box and lowered the box
on every slice on the hippocampus (docs/benchmarks/fewshot.md): one decoder learnt one meaning for two kinds of box.
A :class:`WalkPrompt` gives it the difference: a learned offset added to the two box-corner tokens of every box
flagged as a walk's (``SamSegmenter.decode(walk=...)``), zero at the start (the model is then unchanged), trained
on walk boxes only and saved in the adapter (``walk_prompt.offset``). A user's boxes never carry it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["WalkPrompt", "add_walk_prompt", "walk_prompt_of"]


def walk_prompt_of(model: nn.Module) -> WalkPrompt | None:
    """``model``'s walk prompt, or None where it has none (every model not trained with walk prompts)."""
    return getattr(model, "walk_prompt", None)


class WalkPrompt(nn.Module):
    """``offset`` [2, D]: added to the (top-left, bottom-right) corner tokens of a walk's box.

    Trained at :attr:`lr_mult` x the base learning rate (:func:`~monai_cbo.peft.optimizer_param_groups`), as CBO's
    small shared tensors are: at the base rate, 10 minutes of training moved it by a norm of 0.03 against the box
    tokens' 11.5 (hippocampus, N = 4), i.e. not at all.
    """

    lr_mult = 100.0

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(2, dim))

    def add_to(self, sparse: torch.Tensor, walk: torch.Tensor) -> torch.Tensor:
        """``sparse`` [P, T, D] prompt tokens whose last two are a box's corners (segment-anything's order: points,
        then the box); ``walk`` [P] (bool): the prompts whose box is a walk's."""
        flags = walk.to(device=sparse.device, dtype=sparse.dtype).reshape(-1, 1, 1)
        pad = sparse.new_zeros(sparse.shape[1] - 2, sparse.shape[2])
        return sparse + flags * torch.cat([pad, self.offset.to(sparse.dtype)])[None]

    def extra_repr(self) -> str:
        return f"dim={self.offset.shape[1]}"


def add_walk_prompt(model: nn.Module) -> nn.Module:
    """Give ``model`` (a :class:`~monai_cbo.networks.SamSegmenter`) a trainable :class:`WalkPrompt` (zero: the model
    answers exactly as before until it is trained). Call it after :func:`~monai_cbo.peft.apply_peft`, which freezes
    everything it does not name.

    Raises:
        ValueError: the model already has one.
    """
    if walk_prompt_of(model) is not None:
        raise ValueError("the model already has a walk prompt")
    tokens = model.prompt_encoder.point_embeddings[2].weight  # a box corner's embedding: its width and device
    model.walk_prompt = WalkPrompt(tokens.shape[-1]).to(tokens.device)
    return model
