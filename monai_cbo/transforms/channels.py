"""Map a channel-first image ``[C, *spatial]`` to the 3 input channels of a SAM image encoder."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = ["ToModelChannels", "ToModelChannelsD", "ToModelChannelsDict", "ToModelChannelsd"]


class ToModelChannels(Transform):
    """Return a 3-channel image ``[3, *spatial]`` from ``[C, *spatial]``.

    Rule: with ``channels=None`` a 1-channel image is repeated 3x and a 3-channel image is kept; any other
    channel count is an error (the modalities must come from configuration). With ``channels`` (one to three
    indices into the input channels) the selected channels are taken in that order and the last one is repeated
    to fill 3: ``[i] -> [i, i, i]``, ``[i, j] -> [i, j, j]``, ``[i, j, k] -> [i, j, k]``.

    Args:
        channels: input channel indices (0 <= index < C), e.g. ``[0, 1, 3]`` for FLAIR/T1c/T2 of a BraTS case
            loaded as FLAIR, T1c, T1, T2. Default None (see the rule above).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: Sequence[int] | None = None) -> None:
        if channels is not None:
            channels = [int(c) for c in channels]
            if not 1 <= len(channels) <= 3 or min(channels) < 0:
                raise ValueError(f"channels must be 1 to 3 non-negative indices, got {channels}")
        self.channels = channels

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        num = img.shape[0]
        if self.channels is None:
            if num not in (1, 3):
                raise ValueError(
                    f"image has {num} channels; pass channels=[...] with up to three of the indices 0..{num - 1}"
                )
            index = [0, 0, 0] if num == 1 else [0, 1, 2]
        else:
            if max(self.channels) >= num:
                raise ValueError(
                    f"channels {self.channels} out of range: the image has {num} channel(s), indices 0..{num - 1}; "
                    "choose up to three of them"
                )
            index = (self.channels + [self.channels[-1]] * 3)[:3]
        return img[index]


class ToModelChannelsd(MapTransform):
    """Dictionary version of :class:`ToModelChannels`."""

    backend = ToModelChannels.backend

    def __init__(
        self, keys: KeysCollection, channels: Sequence[int] | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToModelChannels(channels)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


ToModelChannelsD = ToModelChannelsDict = ToModelChannelsd
