"""Prompts from binary masks ``[P, H, W]`` (one mask per prompt, non-zero = foreground), in SAM's conventions.

Coordinates are pixel indices with x = column (W axis) and y = row (H axis), the reverse of array order.
A box is ``[x_min, y_min, x_max, y_max]`` with the max the *last* foreground index (inclusive), so a one-pixel
mask at (row 4, col 7) has the box ``[7, 4, 7, 4]``. Points are ``(x, y)`` with label 1 (positive) or 0
(negative). Outputs are float32 coordinates / int64 labels, numpy for numpy input, plain tensors otherwise.
Random draws come from ``self.R`` (seed with ``set_random_state``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = [
    "BoxFromMask",
    "BoxFromMaskD",
    "BoxFromMaskDict",
    "BoxFromMaskd",
    "PointsFromMask",
    "PointsFromMaskD",
    "PointsFromMaskDict",
    "PointsFromMaskd",
    "grow_box",
]


def _masks(mask: NdarrayOrTensor, owner: str) -> np.ndarray:
    """Boolean numpy masks ``[P, H, W]``; ValueError for any other shape."""
    if mask.ndim != 3:
        raise ValueError(f"{owner} expects masks [P, H, W] (one per prompt), got shape {tuple(mask.shape)}")
    return convert_to_numpy(mask) != 0


def grow_box(box: np.ndarray, margin: float, min_margin: float, limit: tuple[float, float]) -> np.ndarray:
    """An XYXY box grown on each side by ``margin`` of its width / height (inclusive pixels), at least
    ``min_margin``, kept inside ``0 .. limit`` (the largest x, y): the box a propagation walk prompts the next
    slice with (:class:`~monai_cbo.inferers.PropagationConfig`), and the one walk-box training draws."""
    box = np.asarray(box, dtype=np.float32)
    grow = np.maximum(min_margin, margin * (box[2:] - box[:2] + 1))
    upper = np.asarray(limit, dtype=np.float32)
    return np.concatenate([np.maximum(box[:2] - grow, 0), np.minimum(box[2:] + grow, upper)]).astype(np.float32)


def _like(out: np.ndarray, ref: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` as numpy for numpy ``ref``, else as a plain tensor on ``ref``'s device."""
    return out if isinstance(ref, np.ndarray) else torch.as_tensor(out, device=ref.device)


class BoxFromMask(Randomizable, Transform):
    """Tight XYXY box of each mask, optionally jittered: ``[P, H, W]`` -> ``[P, 4]`` float32.

    With ``jitter > 0`` each coordinate moves by an integer drawn uniformly from ``[-jitter, jitter]``; the
    result is clipped to the image and each min/max stays on its side of the tight box's centre, so a jittered
    box is never empty or inverted and always covers the centre of the tight box. An empty mask is a ValueError
    (SAM has no box for "nothing"; :class:`~monai_cbo.transforms.LabelToBinaryTargets` never makes one).

    Args:
        jitter: largest shift of a coordinate, in pixels. Default 0 (tight boxes).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, jitter: int = 0) -> None:
        if jitter < 0 or int(jitter) != jitter:
            raise ValueError(f"jitter must be a non-negative whole number of pixels, got {jitter}")
        self.jitter = int(jitter)

    def __call__(self, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        masks = _masks(mask, type(self).__name__)
        boxes = np.zeros((len(masks), 4), dtype=np.float32)
        for i, m in enumerate(masks):
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size == 0:
                raise ValueError(f"mask {i} of {len(masks)} is empty: a box needs foreground; drop empty targets")
            lo, hi = np.array([cols[0], rows[0]]), np.array([cols[-1], rows[-1]])
            if self.jitter:
                shift = self.R.randint(-self.jitter, self.jitter + 1, size=4)
                centre = lo + hi
                lo = np.clip(lo + shift[:2], 0, centre // 2)
                hi = np.clip(hi + shift[2:], (centre + 1) // 2, np.array(m.shape[::-1]) - 1)
            boxes[i] = np.concatenate([lo, hi])
        return _like(boxes, mask)


class PointsFromMask(Randomizable, Transform):
    """Random point prompts per mask: ``[P, H, W]`` -> ``(coords [P, N, 2] float32 (x, y), labels [P, N] int64)``.

    ``N = num_pos + num_neg``: ``num_pos`` foreground pixels (label 1) then ``num_neg`` background pixels
    (label 0), each drawn uniformly, distinct while the mask has enough pixels and with replacement otherwise.
    A mask without foreground (with ``num_pos > 0``) or without background (with ``num_neg > 0``) is a
    ValueError.

    Args:
        num_pos: positive points per mask. Default 1.
        num_neg: negative points per mask. Default 0.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_pos: int = 1, num_neg: int = 0) -> None:
        if num_pos < 0 or num_neg < 0 or num_pos + num_neg == 0:
            raise ValueError(f"need num_pos, num_neg >= 0 and at least one point, got {num_pos}, {num_neg}")
        self.num_pos, self.num_neg = num_pos, num_neg

    def _draw(self, pool: np.ndarray, n: int, what: str, index: int) -> np.ndarray:
        if n and pool.size == 0:
            raise ValueError(f"mask {index} has no {what} pixels to draw {n} point(s) from")
        return self.R.choice(pool, size=n, replace=n > pool.size) if n else pool[:0]

    def __call__(self, mask: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        masks = _masks(mask, type(self).__name__)
        coords = np.zeros((len(masks), self.num_pos + self.num_neg, 2), dtype=np.float32)
        for i, m in enumerate(masks):
            flat = m.ravel()
            picks = np.concatenate(
                [
                    self._draw(np.flatnonzero(flat), self.num_pos, "foreground", i),
                    self._draw(np.flatnonzero(~flat), self.num_neg, "background", i),
                ]
            )
            rows, cols = np.unravel_index(picks, m.shape)
            coords[i] = np.stack([cols, rows], axis=-1)
        labels = np.repeat([[1] * self.num_pos + [0] * self.num_neg], len(masks), axis=0).astype(np.int64)
        return _like(coords, mask), _like(labels, mask)


class BoxFromMaskd(Randomizable, MapTransform):
    """Dictionary version of :class:`BoxFromMask`: boxes of ``d[key]`` go to ``d[key + box_postfix]``."""

    backend = BoxFromMask.backend

    def __init__(
        self, keys: KeysCollection, jitter: int = 0, box_postfix: str = "_box", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.boxer, self.box_postfix = BoxFromMask(jitter), box_postfix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> BoxFromMaskd:
        super().set_random_state(seed, state)
        self.boxer.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.box_postfix}"] = self.boxer(d[key])
        return d


class PointsFromMaskd(Randomizable, MapTransform):
    """Dictionary version of :class:`PointsFromMask`: points of ``d[key]`` go to ``d[key + points_postfix]`` and
    their labels to ``d[key + point_labels_postfix]``."""

    backend = PointsFromMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_pos: int = 1,
        num_neg: int = 0,
        points_postfix: str = "_points",
        point_labels_postfix: str = "_point_labels",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.sampler = PointsFromMask(num_pos, num_neg)
        self.points_postfix, self.point_labels_postfix = points_postfix, point_labels_postfix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> PointsFromMaskd:
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.points_postfix}"], d[f"{key}{self.point_labels_postfix}"] = self.sampler(d[key])
        return d


BoxFromMaskD = BoxFromMaskDict = BoxFromMaskd
PointsFromMaskD = PointsFromMaskDict = PointsFromMaskd
