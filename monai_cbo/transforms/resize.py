"""Resize a 2D slice to the model input (longest side = ``target``, pad bottom/right) and back, exactly.

The resized shape follows SAM's ``ResizeLongestSide``: ``scale = target / max(H, W)``, ``h = int(H * scale + 0.5)``
(at least 1), likewise ``w``. The only metadata the inverse needs is the original ``(H, W)``.
Modes: "bilinear" (images, logits; antialiased when shrinking, like SAM's PIL resize) and "nearest" (label
maps and binary masks; torch's "nearest-exact", which keeps the dtype).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple_rep

__all__ = [
    "ResizeLongestSidePad",
    "ResizeLongestSidePadD",
    "ResizeLongestSidePadDict",
    "ResizeLongestSidePadd",
    "resized_shape",
    "restore_slice",
    "scale_coords",
]

MODES = ("bilinear", "nearest")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose 'bilinear' (images, logits) or 'nearest' (labels, masks)")
    return mode


def resized_shape(original_size: Sequence[int], target: int) -> tuple[int, int]:
    """``(h, w)`` of an ``(H, W)`` slice whose longest side is resized to ``target`` (aspect ratio kept)."""
    height, width = (int(s) for s in original_size)
    scale = target / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _resize(img: NdarrayOrTensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize ``[..., H, W]`` to ``[..., *size]`` as a plain tensor (float for bilinear, input dtype for nearest)."""
    x = convert_to_tensor(img, track_meta=False)
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x if mode == "nearest" or x.is_floating_point() else x.float()
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])
    dtype = flat.dtype if flat.is_floating_point() else torch.float32
    if flat.shape[1] == 0:
        out = flat.new_zeros((1, 0, *size), dtype=dtype)
    elif mode == "bilinear":
        out = F.interpolate(flat.to(dtype), size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(flat.to(dtype), size=size, mode="nearest-exact")
    out = out.reshape(*lead, *size)
    return out.to(x.dtype) if mode == "nearest" else out


def _like(out: torch.Tensor, ref: NdarrayOrTensor) -> NdarrayOrTensor:
    return out.cpu().numpy() if isinstance(ref, np.ndarray) else out


def restore_slice(x: NdarrayOrTensor, original_size: Sequence[int], mode: str = "bilinear") -> NdarrayOrTensor:
    """Undo :class:`ResizeLongestSidePad`: crop the padding of ``[..., S, S]`` and resize to ``[..., H, W]``.

    ``S`` may differ from the ``target`` used forwards (e.g. SAM's 256x256 low-res logits of a 1024 input):
    the crop is the resized shape at ``S``. Use "bilinear" for logits/probabilities, "nearest" for masks.
    """
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"restore_slice expects a square model output [..., S, S], got shape {tuple(x.shape)}")
    h, w = resized_shape(original_size, x.shape[-1])
    return _like(_resize(x[..., :h, :w], tuple(int(s) for s in original_size), _check_mode(mode)), x)


def scale_coords(
    coords: NdarrayOrTensor, original_size: Sequence[int], target: int, inverse: bool = False
) -> NdarrayOrTensor:
    """Map points ``[..., 2]`` (x, y) or XYXY boxes ``[..., 4]`` from slice to model-input coordinates.

    x scales by ``w / W`` and y by ``h / H`` with ``(h, w) = resized_shape((H, W), target)`` (SAM's
    ``apply_coords``); ``inverse=True`` maps model-input coordinates back to the slice. Returns float32.
    """
    if coords.shape[-1] not in (2, 4):
        raise ValueError(f"coords must be points [..., 2] or boxes [..., 4], got shape {tuple(coords.shape)}")
    height, width = (int(s) for s in original_size)
    h, w = resized_shape((height, width), target)
    factor = np.array([w / width, h / height], dtype=np.float64)
    factor = np.tile(1 / factor if inverse else factor, coords.shape[-1] // 2)
    c = convert_to_tensor(coords, dtype=torch.float64, track_meta=False)
    return _like((c * torch.as_tensor(factor, device=c.device)).float(), coords)


class ResizeLongestSidePad(Transform):
    """Resize a slice ``[C, H, W]`` so its longest side is ``target``, then zero-pad bottom/right: ``[C, T, T]``.

    Returns the input's container type without metadata (numpy stays numpy). :meth:`inverse` (or
    :func:`restore_slice`) restores ``[C, H, W]`` exactly given the original ``(H, W)``.

    Args:
        target: side of the square model input. Default 256.
        mode: "bilinear" (default, images) or "nearest" (labels, masks).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, target: int = 256, mode: str = "bilinear") -> None:
        if target < 1 or int(target) != target:
            raise ValueError(f"target must be a positive whole number of pixels, got {target}")
        self.target, self.mode = int(target), _check_mode(mode)

    def __call__(self, img: NdarrayOrTensor, mode: str | None = None) -> NdarrayOrTensor:
        if img.ndim != 3:
            raise ValueError(f"ResizeLongestSidePad expects a slice [C, H, W], got shape {tuple(img.shape)}")
        h, w = resized_shape(img.shape[-2:], self.target)
        out = _resize(img, (h, w), _check_mode(mode or self.mode))
        return _like(F.pad(out, (0, self.target - w, 0, self.target - h)), img)

    def inverse(self, img: NdarrayOrTensor, original_size: Sequence[int], mode: str | None = None) -> NdarrayOrTensor:
        """``[..., T, T]`` -> ``[..., H, W]`` for ``original_size = (H, W)``; see :func:`restore_slice`."""
        return restore_slice(img, original_size, mode or self.mode)


class ResizeLongestSidePadd(MapTransform):
    """Dictionary version of :class:`ResizeLongestSidePad`.

    Records each key's original ``(H, W)`` as a tuple of ints under ``key + original_size_postfix``;
    :meth:`inverse` reads it back to restore the keys of a (single, uncollated) sample.

    Args:
        keys: keys of the slices to resize.
        target: side of the square model input. Default 256.
        mode: one per key or one for all: "bilinear" (images) or "nearest" (labels). Default "bilinear".
        original_size_postfix: postfix of the recorded original size. Default "_original_size".
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = ResizeLongestSidePad.backend

    def __init__(
        self,
        keys: KeysCollection,
        target: int = 256,
        mode: str | Sequence[str] = "bilinear",
        original_size_postfix: str = "_original_size",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = [_check_mode(m) for m in ensure_tuple_rep(mode, len(self.keys))]
        self.resizer = ResizeLongestSidePad(target)
        self.original_size_postfix = original_size_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[f"{key}{self.original_size_postfix}"] = tuple(int(s) for s in d[key].shape[-2:])
            d[key] = self.resizer(d[key], mode)
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizer.inverse(d[key], d[f"{key}{self.original_size_postfix}"], mode)
        return d


ResizeLongestSidePadD = ResizeLongestSidePadDict = ResizeLongestSidePadd
