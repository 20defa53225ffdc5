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

from .prompts import BoxFromMask
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
    ) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.image_key, self.label_key, self.boxes_key = image_key, label_key, boxes_key
        self.auto_label_key = auto_label_key
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
        if self.auto_label_key is not None:
            d[self.auto_label_key] = targets.clone()
        targets[~present] = IGNORE
        d[self.image_key] = torch.as_tensor(np.asarray(self.resize_image(convert_to_tensor(image, track_meta=False))))
        d[self.label_key] = targets
        d[self.boxes_key] = boxes
        return d
