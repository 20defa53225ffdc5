"""Volumes to 2D slices: canonical orientation, the slicing axis, and foreground-aware slice sampling.

Axis convention: a volume is channel-first ``[C, d0, d1, d2]``; ``slice_axis`` (0, 1, 2 or -3..-1) names one of
the three spatial axes. :func:`move_slice_axis` moves it to the end, keeping the other two in their order, so
a slice is ``[C, H, W]`` with H the first and W the second remaining axis (no transpose, no flip). After
``Orientationd(axcodes="RAS")`` the default ``slice_axis=-1`` gives axial slices ``[C, R, A]`` (H grows towards
the right, W towards anterior); 0 gives sagittal ``[C, A, S]`` and 1 coronal ``[C, R, S]`` slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientationd, Randomizable, Spacingd, Transform
from monai.transforms.traits import MultiSampleTrait
from monai.transforms.utils_pytorch_numpy_unification import ascontiguousarray, moveaxis
from monai.utils import TransformBackends, convert_to_numpy, ensure_tuple_rep

__all__ = [
    "RandSampleSlices",
    "RandSampleSlicesD",
    "RandSampleSlicesDict",
    "RandSampleSlicesd",
    "canonical_orientation_transforms",
    "move_slice_axis",
]


def _check_slice_axis(slice_axis: int) -> int:
    """Return ``slice_axis`` as 0, 1 or 2; raise ValueError otherwise."""
    if slice_axis not in (-3, -2, -1, 0, 1, 2):
        raise ValueError(f"slice_axis must be a spatial axis 0, 1, 2 (or -3..-1), got {slice_axis}")
    return slice_axis % 3


def move_slice_axis(img: NdarrayOrTensor, slice_axis: int = -1) -> NdarrayOrTensor:
    """Move spatial axis ``slice_axis`` of ``[C, d0, d1, d2]`` to the end: ``[C, H, W, S]`` (a view where possible)."""
    if img.ndim != 4:
        raise ValueError(f"expected a channel-first volume [C, d0, d1, d2], got shape {tuple(img.shape)}")
    return moveaxis(img, 1 + _check_slice_axis(slice_axis), -1)


def canonical_orientation_transforms(
    keys: KeysCollection,
    axcodes: str = "RAS",
    inplane_spacing: float | Sequence[float] | None = None,
    slice_axis: int = -1,
    mode: str | Sequence[str] = "bilinear",
    allow_missing_keys: bool = False,
) -> list[MapTransform]:
    """MONAI transforms that put volumes in a canonical axis order before slicing.

    ``Orientationd(axcodes)`` reorders the axes (RAS: the last axis is S, so ``slice_axis=-1`` is axial). With
    ``inplane_spacing`` a ``Spacingd`` follows that resamples the two in-plane axes and leaves the spacing along
    ``slice_axis`` unchanged (MONAI keeps the original spacing where ``pixdim`` is non-positive). Both need
    MetaTensor inputs with an affine (``LoadImaged`` + ``EnsureChannelFirstd``).

    Args:
        keys: keys of the volumes (image and label).
        axcodes: target orientation codes. Default "RAS".
        inplane_spacing: in-plane spacing (mm) as one value or (first, second) in-plane axis order; None skips
            resampling.
        slice_axis: spatial axis that will be sliced (0, 1, 2 or -3..-1). Default -1.
        mode: ``Spacingd`` interpolation, one per key or one for all ("bilinear" for images, "nearest" for labels).
        allow_missing_keys: passed to the MONAI transforms.
    """
    # explicit classic L/R, P/A, I/S codes: newer MONAI deprecates the default in favour of the MetaTensor space
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    out: list[MapTransform] = [Orientationd(keys, axcodes, labels=labels, allow_missing_keys=allow_missing_keys)]
    if inplane_spacing is None:
        return out
    spacing = [float(s) for s in ensure_tuple_rep(inplane_spacing, 2)]
    if min(spacing) <= 0:
        raise ValueError(f"inplane_spacing must be positive, got {inplane_spacing}")
    spacing.insert(_check_slice_axis(slice_axis), -1.0)
    out.append(Spacingd(keys, pixdim=spacing, mode=mode, allow_missing_keys=allow_missing_keys))
    return out


class RandSampleSlices(Randomizable, Transform, MultiSampleTrait):
    """Draw ``num_samples`` 2D slices ``[C, H, W]`` from a volume ``[C, d0, d1, d2]``, guided by its label.

    :meth:`randomize` picks slice indices from a label volume ``[1, d0, d1, d2]`` (float labels are rounded):

    - a slice is *foreground for class c* if it has at least ``min_foreground`` voxels equal to c; every other
      slice is *background*;
    - each sample is background with probability ``background_ratio`` (drawn per sample, as in MONAI's
      ``RandCropByPosNegLabel``), otherwise foreground: a class is chosen uniformly among the classes that have
      foreground slices, then one of its slices;
    - a volume without foreground slices gives only background slices, and one without background slices only
      foreground slices;
    - within one pool (the background, or one class) slices are distinct while the pool is large enough and
      drawn with replacement once ``num_samples`` exceeds it; the result is shuffled.

    Slices are plain (metadata-free) copies: a 3D affine does not describe a 2D slice.

    Args:
        num_samples: slices per volume. Default 1.
        min_foreground: voxels of a class a slice needs to count as foreground for it. Default 1.
        background_ratio: probability in [0, 1] that a sample is a background slice. Default 0.
        slice_axis: spatial axis to slice along (see :func:`move_slice_axis`). Default -1.
        classes: label values that count as foreground; None (default) takes every non-zero value present.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        num_samples: int = 1,
        min_foreground: int = 1,
        background_ratio: float = 0.0,
        slice_axis: int = -1,
        classes: Sequence[int] | None = None,
    ) -> None:
        if num_samples < 1 or min_foreground < 1:
            raise ValueError(f"num_samples and min_foreground must be >= 1, got {num_samples}, {min_foreground}")
        if not 0 <= background_ratio <= 1:
            raise ValueError(f"background_ratio must be in [0, 1], got {background_ratio}")
        if classes is not None and len(classes) == 0:
            raise ValueError("classes must name at least one label value, or be None for all non-zero values")
        self.num_samples, self.min_foreground, self.background_ratio = num_samples, min_foreground, background_ratio
        self.slice_axis = _check_slice_axis(slice_axis)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.indices: np.ndarray | None = None
        self.spatial_shape: tuple[int, ...] | None = None

    def _draw(self, pool: np.ndarray, n: int) -> np.ndarray:
        return self.R.choice(pool, size=n, replace=n > pool.size) if n else pool[:0]

    def randomize(self, label: NdarrayOrTensor) -> None:
        """Draw ``self.indices`` (``num_samples`` indices along ``slice_axis``) from ``label [1, d0, d1, d2]``."""
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"label must be a channel-first volume [1, d0, d1, d2], got shape {tuple(label.shape)}")
        self.spatial_shape = tuple(label.shape[1:])
        lab = convert_to_numpy(move_slice_axis(label, self.slice_axis))
        lab = np.rint(lab) if np.issubdtype(lab.dtype, np.floating) else lab
        classes = self.classes if self.classes is not None else [int(c) for c in np.unique(lab) if c != 0]
        counts = [(lab == c).sum(axis=(0, 1, 2)) >= self.min_foreground for c in classes]
        foreground = np.array(counts, dtype=bool).reshape(len(classes), lab.shape[-1])
        pools = [np.flatnonzero(row) for row in foreground if row.any()]
        background = np.flatnonzero(~foreground.any(axis=0))
        n_bg = int((self.R.random_sample(self.num_samples) < self.background_ratio).sum())
        if not pools:
            n_bg = self.num_samples
        elif background.size == 0:
            n_bg = 0
        picks = self.R.randint(len(pools), size=self.num_samples - n_bg) if pools else np.zeros(0, int)
        drawn = [self._draw(background, n_bg)] + [self._draw(p, int((picks == i).sum())) for i, p in enumerate(pools)]
        self.indices = self.R.permutation(np.concatenate(drawn))

    def __call__(
        self, img: NdarrayOrTensor, label: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> list[NdarrayOrTensor]:
        """Slices ``[C, H, W]`` of ``img`` at indices drawn from ``label`` (the last ones if ``randomize=False``)."""
        if randomize:
            if label is None:
                raise ValueError("RandSampleSlices needs the label volume to draw slices: call it as (img, label)")
            self.randomize(label)
        if self.indices is None:
            raise ValueError("no slice indices yet: call randomize(label) first or pass label with randomize=True")
        if tuple(img.shape[1:]) != self.spatial_shape:
            raise ValueError(
                f"image spatial shape {tuple(img.shape[1:])} differs from the label's {self.spatial_shape}; "
                "resample both onto the same grid first"
            )
        vol = move_slice_axis(img.as_tensor() if isinstance(img, MetaTensor) else img, self.slice_axis)
        return [ascontiguousarray(vol[..., int(i)]) for i in self.indices]


class RandSampleSlicesd(Randomizable, MapTransform, MultiSampleTrait):
    """Dictionary version of :class:`RandSampleSlices`: one volume dict in, ``num_samples`` slice dicts out.

    Each output dict holds the slices ``[C, H, W]`` of ``keys`` at one drawn index, that index as an int under
    ``slice_index_key``, and deep copies of every other item of the input.

    Args:
        keys: keys of the volumes to slice (image and usually the label).
        label_key: key of the label volume ``[1, d0, d1, d2]`` that guides the sampling.
        num_samples, min_foreground, background_ratio, slice_axis, classes: see :class:`RandSampleSlices`.
        slice_index_key: output key of the slice index. Default "slice_index".
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RandSampleSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        num_samples: int = 1,
        min_foreground: int = 1,
        background_ratio: float = 0.0,
        slice_axis: int = -1,
        classes: Sequence[int] | None = None,
        slice_index_key: str = "slice_index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.slice_index_key = label_key, slice_index_key
        self.sampler = RandSampleSlices(num_samples, min_foreground, background_ratio, slice_axis, classes)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSampleSlicesd:
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, label: NdarrayOrTensor) -> None:
        self.sampler.randomize(label)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> list[dict[Hashable, NdarrayOrTensor]]:
        d = dict(data)
        self.randomize(d[self.label_key])
        out = [{k: v if k in self.keys else deepcopy(v) for k, v in d.items()} for _ in self.sampler.indices]
        for key in self.key_iterator(d):
            for sample, piece in zip(out, self.sampler(d[key], randomize=False), strict=True):
                sample[key] = piece
        for sample, index in zip(out, self.sampler.indices, strict=True):
            sample[self.slice_index_key] = int(index)
        return out


RandSampleSlicesD = RandSampleSlicesDict = RandSampleSlicesd
