"""Modality presets: map CT (HU) and MRI intensities of a channel-first image ``[C, *spatial]`` to [0, 1].

Both presets accept numpy arrays and torch tensors of any integer or float dtype (uint8, int16, float32, ...)
and return float32 in the input's container (a MetaTensor keeps its metadata). They never output NaN:
NaN counts as the lowest value (-> 0) and +Inf / -Inf are clipped to 1 / 0. A constant image becomes zeros under
:class:`MRIPercentileScale` (its percentile window is empty); :class:`CTWindow` has a fixed HU window, so a
constant image maps to the constant's place in that window.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor

__all__ = [
    "DEFAULT_CT_WINDOW",
    "CTWindow",
    "CTWindowD",
    "CTWindowDict",
    "CTWindowd",
    "MRIPercentileScale",
    "MRIPercentileScaleD",
    "MRIPercentileScaleDict",
    "MRIPercentileScaled",
]


#: the CT window (lowest, highest HU) wherever nothing else names one: ``segment`` and the label app without a
#: bundle, the bench. Soft tissue (W400 L40), chosen over (-500, 1000), (-1000, 1000) and (-500, 1300) by the sweep
#: in ``docs/benchmarks/ct_window.md`` (organs, muscle and bone, zero-shot LiteMedSAM); a bundle's task names
#: its own.
DEFAULT_CT_WINDOW: tuple[float, float] = (-160.0, 240.0)


def _as_float(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain float32 torch view/copy of ``img`` (no metadata)."""
    return convert_to_tensor(img, dtype=torch.float32, track_meta=False)


def _window(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clip ``x`` to [low, high] (NaN -> low, +-Inf -> high/low) and scale it to [0, 1]; zeros if high <= low."""
    low, high = (float(torch.tensor(v, dtype=x.dtype)) for v in (low, high))  # exact 0 and 1 at the bounds
    if not high > low:
        return torch.zeros_like(x)
    x = torch.nan_to_num(x, nan=low, posinf=high, neginf=low).clamp(low, high)
    return (x - low) / (high - low)


class CTWindow(Transform):
    """Clip a CT image to the HU window ``[a_min, a_max]`` and scale it linearly to [0, 1] (float32).

    Args:
        a_min: lower window bound in HU (maps to 0). Default: :data:`DEFAULT_CT_WINDOW`'s.
        a_max: upper window bound in HU (maps to 1). Default: :data:`DEFAULT_CT_WINDOW`'s.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, a_min: float = DEFAULT_CT_WINDOW[0], a_max: float = DEFAULT_CT_WINDOW[1]) -> None:
        if not a_min < a_max:
            raise ValueError(f"CTWindow needs a_min < a_max, got a_min={a_min}, a_max={a_max}; swap or widen them")
        self.a_min, self.a_max = float(a_min), float(a_max)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        out = _window(_as_float(img), self.a_min, self.a_max)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class MRIPercentileScale(Transform):
    """Scale an MRI image ``[C, *spatial]`` so its ``lower``..``upper`` percentiles map to 0..1, clipped (float32).

    Percentiles are taken over finite values only (and over non-zero values with ``nonzero=True``, where zero
    voxels then stay 0). A channel (or image) with no such values, or with equal percentiles, becomes zeros.

    Args:
        lower: lower percentile in [0, 100), maps to 0. Default 0.5.
        upper: upper percentile in (lower, 100], maps to 1. Default 99.5.
        channel_wise: percentiles per channel (True, default) or over the whole image.
        nonzero: compute percentiles over non-zero voxels only and keep zeros at 0 (skull-stripped MRI).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, lower: float = 0.5, upper: float = 99.5, channel_wise: bool = True, nonzero: bool = False
    ) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"MRIPercentileScale needs 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper = lower, upper
        self.channel_wise, self.nonzero = channel_wise, nonzero

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        valid = torch.isfinite(x) & (x != 0) if self.nonzero else torch.isfinite(x)
        values = x[valid]
        if values.numel() == 0:
            return torch.zeros_like(x)
        low, high = np.percentile(convert_to_numpy(values), [self.lower, self.upper])
        out = _window(x, float(low), float(high))
        return out.masked_fill(x == 0, 0.0) if self.nonzero else out

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.ndim < 2:
            raise ValueError(f"MRIPercentileScale expects a channel-first image [C, *spatial], got shape {img.shape}")
        x = _as_float(img)
        rows = x.reshape(x.shape[0] if self.channel_wise else 1, -1)
        out = torch.stack([self._scale(row) for row in rows]).reshape(x.shape)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class CTWindowd(MapTransform):
    """Dictionary version of :class:`CTWindow`."""

    backend = CTWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        a_min: float = DEFAULT_CT_WINDOW[0],
        a_max: float = DEFAULT_CT_WINDOW[1],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = CTWindow(a_min, a_max)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class MRIPercentileScaled(MapTransform):
    """Dictionary version of :class:`MRIPercentileScale`."""

    backend = MRIPercentileScale.backend

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        channel_wise: bool = True,
        nonzero: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = MRIPercentileScale(lower, upper, channel_wise, nonzero)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


CTWindowD = CTWindowDict = CTWindowd
MRIPercentileScaleD = MRIPercentileScaleDict = MRIPercentileScaled
