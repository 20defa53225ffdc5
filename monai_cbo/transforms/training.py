"""A prompted training sample per slice: fixed prompt slots, one per configured class (the class channels come
from :class:`~monai_cbo.transforms.ClassChannelsd` in :mod:`monai_cbo.transforms.labels`).

Prompted training needs a fixed number of prompts per sample so batches collate: every configured class
(or BraTS region) is one prompt slot. A slot whose class is absent from the slice is padded: a zero box and a
target filled with :data:`IGNORE` that the loss skips.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from .prompts import BoxFromMask, grow_box
from .resize import ResizeLongestSidePad

__all__ = [
    "IGNORE",
    "SlicePromptsd",
]

IGNORE = -1.0


class SlicePromptsd(Randomizable, MapTransform):
    """A 2D training sample for the prompted segmenter, from an image slice and its class channels.

    Input: ``image_key`` ``[3, H, W]`` and ``label_key`` ``[K, H, W]`` binary channels. Output:
    ``image_key`` ``[3, S, S]`` (longest side resized to S, padded), ``label_key`` ``[K, S, S]`` targets
    (:data:`IGNORE` for an absent class), ``boxes_key`` ``[K, 4]`` XYXY in input pixels, from each target's
    tight box with symmetric random jitter of up to ``jitter`` input pixels (seeded via ``self.R``).

    Args:
        image_key, label_key: keys of the slice and its channels.
        size: model input side S (256 for LiteMedSAM, 1024 for SAM ViT).
        jitter: box jitter in model-input pixels. Default 0.
        min_pixels: pixels a class needs on the slice to get a prompt. Default 1.
        boxes_key: output key of the boxes. Default "boxes".
        auto_label_key: if given, also write the targets of automatic training there: ``[K, S, S]`` binary, every
            class, empty (not :data:`IGNORE`) where absent, however few pixels a class has. Default None.
        walk_key: if given and present in a sample (``[K, H, W]``, the class channels of a neighbouring slice), a
            class present on both slices gets the box a propagation would give it there: the neighbour's tight
            box grown as :class:`~monai_cbo.inferers.PropagationConfig` grows a propagated box (``walk_margin``:
            its ``margin`` and ``min_margin``, the latter in slice pixels), unjittered. The target stays this
            slice's mask, so the model learns to segment a slice from its neighbour's box, the prompt every slice
            of a one-key-box walk gets. Default None.
        walk_margin: (fraction of the box's side, least slice pixels) a walk box is grown by. Default (0.1, 2.0),
            the propagation's defaults.
        walk_flag_key: if given, also write there ``[K]`` (bool): which classes' boxes are a walk's (the
            segmenter's ``walk`` prompt, :class:`~monai_cbo.networks.WalkPrompt`); all False in a sample without
            a neighbour. Default None.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        size: int = 256,
        jitter: int = 0,
        min_pixels: int = 1,
        boxes_key: str = "boxes",
        auto_label_key: str | None = None,
        walk_key: str | None = None,
        walk_margin: tuple[float, float] = (0.1, 2.0),
        walk_flag_key: str | None = None,
    ) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.image_key, self.label_key, self.boxes_key = image_key, label_key, boxes_key
        self.auto_label_key, self.walk_key, self.walk_flag_key = auto_label_key, walk_key, walk_flag_key
        self.walk_margin = (float(walk_margin[0]), float(walk_margin[1]))
        if min(self.walk_margin) < 0:
            raise ValueError(f"walk_margin must be >= 0, got {walk_margin}")
        self.size, self.min_pixels = int(size), int(min_pixels)
        self.resize_image = ResizeLongestSidePad(self.size, "bilinear")
        self.resize_label = ResizeLongestSidePad(self.size, "nearest")
        self.box = BoxFromMask(jitter)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SlicePromptsd:
        super().set_random_state(seed, state)
        self.box.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:  # draws happen inside BoxFromMask, from the shared self.R
        pass

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        if image.ndim != 3 or label.ndim != 3 or tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise ValueError(
                f"SlicePromptsd expects image [3, H, W] and label [K, H, W] on the same grid, got "
                f"{tuple(image.shape)} and {tuple(label.shape)}"
            )
        lab = convert_to_tensor(label, track_meta=False) > 0.5
        targets = torch.as_tensor(np.asarray(self.resize_label(lab))).float()  # nearest: stays binary
        present = targets.flatten(1).sum(1) >= self.min_pixels
        boxes = torch.zeros(label.shape[0], 4)
        if present.any():  # boxes of the resized targets: jitter is in model-input pixels
            boxes[present] = torch.as_tensor(self.box(targets[present].numpy().astype(np.uint8)))
        walk = d.pop(self.walk_key, None) if self.walk_key is not None else None
        walked = torch.zeros(label.shape[0], dtype=torch.bool)
        if walk is not None:
            walked = self._walk_boxes(walk, present, boxes, tuple(label.shape[1:]))
        if self.walk_flag_key is not None:
            d[self.walk_flag_key] = walked
        if self.auto_label_key is not None:
            d[self.auto_label_key] = targets.clone()
        targets[~present] = IGNORE
        d[self.image_key] = torch.as_tensor(np.asarray(self.resize_image(convert_to_tensor(image, track_meta=False))))
        d[self.label_key] = targets
        d[self.boxes_key] = boxes
        return d

    def _walk_boxes(
        self, walk: NdarrayOrTensor, present: torch.Tensor, boxes: torch.Tensor, shape: tuple
    ) -> torch.Tensor:
        """Replace the boxes of the classes present on both slices by their neighbour's grown box (in place); return
        which they are ([K] bool)."""
        neighbour = convert_to_tensor(walk, track_meta=False) > 0.5
        if tuple(neighbour.shape) != (len(present), *shape):
            raise ValueError(
                f"SlicePromptsd: the neighbour slice's channels {tuple(neighbour.shape)} must match the label's "
                f"{(len(present), *shape)}"
            )
        resized = torch.as_tensor(np.asarray(self.resize_label(neighbour))) > 0.5
        both = present & (resized.flatten(1).sum(1) >= self.min_pixels)
        if not both.any():
            return both
        scale = self.size / max(shape)  # the slice fills the top left of the padded input
        limit = (shape[1] * scale - 1, shape[0] * scale - 1)
        margin, least = self.walk_margin[0], self.walk_margin[1] * scale  # min_margin is in slice pixels
        tight = BoxFromMask()(resized[both].numpy().astype(np.uint8))
        boxes[both] = torch.as_tensor(np.stack([grow_box(box, margin, least, limit) for box in tight]))
        return both
