"""Simulated interaction in training: the steps that teach an adapter what a click means (issue 30).

LiteMedSAM was trained with boxes, and an adapter trained only with boxes has never seen a click either: a
click beside a box made the mask worse (docs/benchmarks/corrections.md). SAM itself was trained by simulating
the user (Kirillov et al. 2023, section 3): a first prompt, then rounds in which a click is drawn from the
current error and the previous mask goes back in as the mask prompt. An *interactive* training step does that
here, in the manner of RITM (Sofiiuk et al. 2022): the earlier rounds run without gradients on the step's own
image embedding (computed once, so a round costs a decoder pass), and the step trains the last round's answer:

1. the first prompt: the slot's box, or (a share ``click_start`` of the steps) one foreground click drawn inside
   the structure and no box: a click starts an object;
2. ``rounds`` (drawn per step, 0 .. ``max_clicks``) rounds, each adding one click per prompt where its current
   mask is most wrong (:func:`error_click`: foreground in the largest miss, background in the largest leak),
   every earlier click kept; with probability ``mask_prompt`` per step each round also gets the previous round's
   low-resolution logits as its mask prompt (inference may or may not feed them back: the adapter learns both);
3. the trained decode: that last prompt, against the slot's label.

Which steps are interactive, their rounds, first prompt and click draws depend only on ``seed`` and the trainer's
iteration (:meth:`Interaction.draw`): a resumed run draws what the uninterrupted one would have. Automatic steps
(class prompts) are never interactive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inferers.prompts import largest_error
from ..transforms.training import IGNORE

__all__ = ["Interaction", "InteractionDraw", "error_click", "simulate_rounds"]


@dataclass(frozen=True)
class Interaction:
    """How many training steps simulate a user, and how.

    Args:
        share: share of the box-prompted steps that are interactive (0: none, the box-only training).
        max_clicks: most correction rounds in a step; each step draws 0 .. ``max_clicks`` uniformly.
        click_start: share of interactive steps started by one foreground click instead of the box.
        mask_prompt: share of interactive steps whose rounds get the previous round's logits as the mask prompt.
        seed: seeds the draws (with the iteration).
    """

    share: float = 0.0
    max_clicks: int = 5
    click_start: float = 0.25
    mask_prompt: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("share", "click_start", "mask_prompt"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"interaction {name} is a share: 0 .. 1, got {getattr(self, name)}")
        if self.max_clicks < 0:
            raise ValueError(f"interaction max_clicks must be >= 0, got {self.max_clicks}")

    def draw(self, step: int | None, rng: np.random.Generator) -> InteractionDraw | None:
        """This step's interaction, or None for a box-only step: from (seed, ``step``) when the step is known,
        else from ``rng``."""
        if self.share <= 0:
            return None
        gen = rng if step is None else np.random.default_rng([self.seed, step, 30])
        if gen.random() >= self.share:
            return None
        rounds = int(gen.integers(0, self.max_clicks + 1))
        return InteractionDraw(
            rounds=rounds,
            click_start=bool(gen.random() < self.click_start),
            mask_prompt=bool(gen.random() < self.mask_prompt),
            seed=int(gen.integers(2**31)),
        )


@dataclass
class InteractionDraw:
    """One interactive step: its correction ``rounds``, whether a click starts it (no box), whether the rounds feed
    the previous logits back as the mask prompt, and the seed of its click draws. ``target`` [B, P, S, S] (the
    batch's labels, ``IGNORE`` in padded slots) is set by the batch preparation."""

    rounds: int
    click_start: bool
    mask_prompt: bool
    seed: int
    target: torch.Tensor | None = None


def error_click(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[float, float, int] | None:
    """A simulated click (x, y, label) where the 2D mask ``pred`` is wrong against ``target``: in the larger of the
    largest missed region (a foreground click, label 1) and the largest leaked region (background, label 0),
    8-connected, a pixel drawn with probability proportional to its squared distance from the region's border
    (a user clicks into the middle of what is wrong, not always at its very centre). With an all-false ``pred``
    this is a click inside the structure: how a click starts an object. None where ``pred`` equals ``target``."""
    from scipy import ndimage

    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    found = largest_error(pred, target)
    if found is None:
        return None
    region, label = found
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(region)
    weight = depth[ys, xs] ** 2
    i = int(rng.choice(len(ys), p=weight / weight.sum()))
    return float(xs[i]), float(ys[i]), label


Decode = Callable[..., torch.Tensor]


def simulate_rounds(
    decode: Decode, boxes: torch.Tensor | None, draw: InteractionDraw, low_res_size: int, threshold: float = 0.0
) -> dict[str, torch.Tensor | None]:
    """The prompt of the trained round of an interactive step (module docstring): ``boxes`` / ``points`` /
    ``point_labels`` / ``mask_inputs`` keywords for the segmenter's ``decode``.

    Args:
        decode: ``decode(boxes=..., points=..., point_labels=..., mask_inputs=...)`` -> mask logits
            [B, P, 1, S, S] at the input size S; called ``draw.rounds`` times, without gradients.
        boxes: the step's boxes [B, P, 4] (input pixels).
        draw: this step's :class:`InteractionDraw`, its ``target`` [B, P, S, S] set.
        low_res_size: side of the mask prompt (the segmenter's ``low_res_size``).
        threshold: logit above which a pixel is in the mask.
    """
    if draw.target is None:
        raise ValueError("an interactive step needs its target: InteractionDraw.target (the batch's label)")
    target = draw.target.detach().cpu().numpy()
    valid = (target != IGNORE).reshape(*target.shape[:2], -1).all(-1)  # [B, P]: padded prompt slots are not
    truth = target > 0.5
    rng = np.random.default_rng(draw.seed)
    clicks: list[list[list[tuple[float, float, int]]]] = [[[] for _ in row] for row in valid]
    device = draw.target.device

    def add_clicks(masks: np.ndarray | None) -> None:
        for b, row in enumerate(valid):
            for p, ok in enumerate(row):
                if ok:
                    pred = np.zeros_like(truth[b, p]) if masks is None else masks[b, p]
                    click = error_click(pred, truth[b, p], rng)
                    clicks[b][p].append(click if click is not None else (0.0, 0.0, -1))  # -1: SAM's "no point"
                else:
                    clicks[b][p].append((0.0, 0.0, -1))

    def prompt(logits: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        kw: dict[str, torch.Tensor | None] = {"boxes": None if draw.click_start else boxes}
        if any(slot for row in clicks for slot in row):
            pts = torch.tensor([[[c[:2] for c in slot] for slot in row] for row in clicks], dtype=torch.float32)
            labels = torch.tensor([[[c[2] for c in slot] for slot in row] for row in clicks], dtype=torch.int64)
            kw["points"], kw["point_labels"] = pts.to(device), labels.to(device)
        if draw.mask_prompt and logits is not None:
            low = logits.flatten(0, 1)
            if low.shape[-1] != low_res_size:
                low = F.interpolate(low, size=(low_res_size, low_res_size), mode="bilinear", align_corners=False)
            kw["mask_inputs"] = low.reshape(*logits.shape[:2], 1, low_res_size, low_res_size)
        return kw

    if draw.click_start:
        add_clicks(None)
    logits = None
    for _ in range(draw.rounds):
        with torch.no_grad():
            logits = decode(**prompt(logits)).float().detach()
        add_clicks((logits[:, :, 0] > threshold).cpu().numpy())
    return prompt(logits)
