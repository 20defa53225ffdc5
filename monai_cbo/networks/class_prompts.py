"""Learned class prompts: what lets a prompted SAM segment a slice with no prompt at all.

Each class of a task owns ``num_tokens`` learned sparse-prompt embeddings (``[C, T, D]``, D the prompt encoder's
embedding width). The mask decoder reads them where it reads a box's two corner tokens, with the prompt
encoder's "no mask" dense embedding, and turns them into that class's mask on any slice, empty where the class
is absent. They train with the PEFT adapters, CBO and the decoder (automatic steps of
:func:`~monai_cbo.training.build_trainer`) and are saved in the adapter checkpoint with the class names.

Design (compared with SAMed, which replaces the prompt with the decoder's fixed "no prompt" embedding and adds a
mask token per class): here the decoder and its single mask token are unchanged and every class is a prompt, so
one adapter still answers box and point prompts with the same decoder, and automatic inference is the same
decoder call as a prompted one. The tokens start as the encoding of a box around the whole image (T = 2) - the
pretrained decoder's "segment the salient object" - so the first automatic steps begin from a sensible mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ClassPrompts", "add_class_prompts", "class_prompts_of"]


def class_prompts_of(model: nn.Module) -> ClassPrompts | None:
    """``model``'s learned class prompts, or None where it has none (an adapter trained without automatic steps,
    or a model that is not a :class:`~monai_cbo.networks.SamSegmenter`)."""
    return getattr(model, "class_prompts", None)


class ClassPrompts(nn.Module):
    """``tokens`` [C, T, D]: the learned sparse prompt of each class in ``class_names`` (in that order).

    ``forward(index)``: the tokens of the classes ``index`` (long [P]) -> [P, T, D].

    How the classes' masks make a label map travels with them (and with the adapter checkpoint):
    ``class_values`` (the label value each class writes; default 1..C) and ``exclusive`` (True: organs, a voxel
    claimed by several classes goes to the most probable; False: nested regions such as BraTS WT / TC / ET, each
    class painted over the ones before it, as :class:`~monai_cbo.transforms.ChannelsToLabelMap` does).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        tokens: torch.Tensor,
        class_values: Sequence[int] | None = None,
        exclusive: bool = True,
    ) -> None:
        super().__init__()
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class prompts need distinct class names, one per class, got {names}")
        if tokens.ndim != 3 or tokens.shape[0] != len(names):
            raise ValueError(f"tokens must be [C, T, D] with C = {len(names)} classes, got {list(tokens.shape)}")
        values = list(range(1, len(names) + 1)) if class_values is None else [int(v) for v in class_values]
        if len(values) != len(names) or min(values) < 1:
            raise ValueError(f"class_values must give one label value >= 1 per class {names}, got {values}")
        if exclusive and len(set(values)) != len(values):
            raise ValueError(f"exclusive classes need distinct label values, got {values}")
        self.class_names, self.class_values, self.exclusive = tuple(names), tuple(values), bool(exclusive)
        self.tokens = nn.Parameter(tokens.detach().clone())

    def spec(self) -> dict:
        """What an adapter checkpoint stores beside the tokens: names, label values, exclusivity."""
        return {"names": list(self.class_names), "values": list(self.class_values), "exclusive": self.exclusive}

    def __len__(self) -> int:
        return len(self.class_names)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.tokens.device).long().reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"class prompt index {index.tolist()} outside 0..{len(self) - 1} ({self.class_names})")
        return self.tokens[index]

    def extra_repr(self) -> str:
        return f"classes={list(self.class_names)}, tokens={list(self.tokens.shape[1:])}"


def add_class_prompts(
    model: nn.Module,
    class_names: Sequence[str],
    seed: int = 0,
    class_values: Sequence[int] | None = None,
    exclusive: bool = True,
) -> nn.Module:
    """Give ``model`` (a :class:`~monai_cbo.networks.SamSegmenter`) trainable class prompts for ``class_names``
    (with the label ``class_values`` and ``exclusive`` of :class:`ClassPrompts`).

    Every class starts from the prompt encoder's encoding of a box around the whole input image, plus a small
    seeded perturbation (std 1 % of the tokens' own) so classes do not start identical. Call it after
    :func:`~monai_cbo.peft.apply_peft`, which freezes everything it does not name.

    Raises:
        ValueError: the model already has class prompts, or the names are empty or repeat.
    """
    if class_prompts_of(model) is not None:
        raise ValueError(f"the model already has class prompts {list(model.class_prompts.class_names)}")
    size = model.img_size
    device = next(model.prompt_encoder.parameters()).device
    with torch.no_grad():
        box = torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]], device=device)
        sparse, _ = model.prompt_encoder(points=None, boxes=box, masks=None)  # [1, 2, D]
    generator = torch.Generator().manual_seed(seed)
    base = sparse.float().cpu().expand(len(class_names), -1, -1)
    noise = torch.randn(base.shape, generator=generator) * 0.01 * base.std()
    model.class_prompts = ClassPrompts(class_names, (base + noise).to(device), class_values, exclusive)
    return model
