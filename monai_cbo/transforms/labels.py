"""Label maps to binary targets and back: one target per class (prompted training), one channel per configured
class whether present or not, nested BraTS regions, and channels back to a label map.

Label maps are channel-first ``[1, *spatial]``; float labels (as stored in many files) are rounded to integers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "ChannelsToLabelMap",
    "ChannelsToLabelMapd",
    "ClassChannels",
    "ClassChannelsd",
    "BRATS_CONVENTIONS",
    "BratsRegions",
    "BratsRegionsD",
    "BratsRegionsDict",
    "BratsRegionsd",
    "LabelToBinaryTargets",
    "LabelToBinaryTargetsD",
    "LabelToBinaryTargetsDict",
    "LabelToBinaryTargetsd",
]

BRATS_CONVENTIONS: dict[str, dict[str, tuple[int, ...]]] = {
    # 1 necrosis, 2 edema, 3 non-enhancing tumour, 4 enhancing tumour
    "2015": {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)},
    # 1 necrotic tumour core (NCR), 2 peritumoral edema (ED), 4 enhancing tumour (ET)
    "2021": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    # 1 NCR, 2 ED, 3 ET
    "2023": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
}


def _integer_labels(label: NdarrayOrTensor, allowed: Sequence[int] | None, owner: str) -> torch.Tensor:
    """``label [1, *spatial]`` as a rounded int64 tensor; ValueError for values outside ``{0} | allowed``."""
    if label.ndim < 2 or label.shape[0] != 1:
        raise ValueError(f"{owner} expects a channel-first label map [1, *spatial], got shape {tuple(label.shape)}")
    lab = torch.round(convert_to_tensor(label, track_meta=False)).long()
    if allowed is not None:
        unknown = sorted(set(torch.unique(lab).tolist()) - {0, *allowed})
        if unknown:
            source = (getattr(label, "meta", None) or {}).get("filename_or_obj")  # a MetaTensor knows its file
            where = f" of {source}" if source else ""
            raise ValueError(
                f"{owner}: label values {unknown}{where} are outside the configured classes {sorted(allowed)}; fix "
                "the classes / convention or map the extra labels to 0 first (e.g. monai.transforms.LabelFilter)"
            )
    return lab


class LabelToBinaryTargets(Transform):
    """One binary target per class present in a label map: ``[1, *spatial]`` -> ``(targets [P, *spatial], ids [P])``.

    Targets are in ascending class order; ``ids`` (int64) holds their class values. A map with no class present
    gives ``P = 0``. Targets keep the input's container (numpy / torch / MetaTensor) with ``dtype``; ids are a
    numpy array for numpy input and a plain tensor otherwise.

    Args:
        classes: the label values to make targets for; any other non-zero value is a ValueError. None (default)
            takes every non-zero value present.
        min_foreground: voxels a class needs to count as present. Default 1.
        dtype: target dtype. Default float32.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        min_foreground: int = 1,
        dtype: DtypeLike | torch.dtype = np.float32,
    ) -> None:
        if min_foreground < 1:
            raise ValueError(f"min_foreground must be >= 1, got {min_foreground}")
        self.classes = None if classes is None else sorted(int(c) for c in classes)
        self.min_foreground, self.dtype = min_foreground, dtype

    def __call__(self, label: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        lab = _integer_labels(label, self.classes, type(self).__name__)[0]
        values, counts = torch.unique(lab, return_counts=True)
        keep = (values != 0) & (counts >= self.min_foreground)
        ids = values[keep]
        targets = convert_to_dst_type(lab[None] == ids.reshape(-1, *[1] * lab.ndim), label, dtype=self.dtype)[0]
        return targets, ids.cpu().numpy() if isinstance(label, np.ndarray) else ids


class BratsRegions(Transform):
    """Nested BraTS regions from a label map: ``[1, *spatial]`` -> ``[R, *spatial]`` (WT, TC, ET for the presets).

    Conventions (:data:`BRATS_CONVENTIONS`): "2015" (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing:
    WT = 1-4, TC = {1, 3, 4}, ET = {4}), "2021" (1 NCR, 2 ED, 4 ET: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}),
    "2023" (1 NCR, 2 ED, 3 ET: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}), or a custom mapping
    ``{region name: label values}`` whose order sets the output channel order. Label values that no region
    lists (besides 0) raise ValueError: they mean the wrong convention.

    Args:
        convention: "2015", "2021", "2023" (int accepted) or a mapping; required, as datasets differ.
        dtype: output dtype. Default float32.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        convention: str | int | Mapping[str, Sequence[int]],
        dtype: DtypeLike | torch.dtype = np.float32,
    ) -> None:
        if isinstance(convention, Mapping):
            mapping = {str(name): tuple(int(v) for v in values) for name, values in convention.items()}
            if not mapping or not all(mapping.values()):
                raise ValueError(f"a custom BraTS mapping needs regions with label values, got {dict(convention)}")
        elif str(convention) in BRATS_CONVENTIONS:
            mapping = BRATS_CONVENTIONS[str(convention)]
        else:
            raise ValueError(
                f"unknown BraTS convention {convention!r}; choose one of {', '.join(BRATS_CONVENTIONS)} "
                "or pass a mapping such as {'WT': [1, 2, 4], 'TC': [1, 4], 'ET': [4]}"
            )
        self.convention, self.mapping, self.dtype = convention, mapping, dtype
        self.regions = list(mapping)
        self.labels = sorted({v for values in mapping.values() for v in values})

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        lab = _integer_labels(label, self.labels, f"BratsRegions(convention={self.convention!r})")[0]
        out = torch.stack(
            [torch.isin(lab, torch.tensor(values, device=lab.device)) for values in self.mapping.values()]
        )
        return convert_to_dst_type(out, label, dtype=self.dtype)[0]


class LabelToBinaryTargetsd(MapTransform):
    """Dictionary version of :class:`LabelToBinaryTargets`: ``d[key]`` becomes the targets ``[P, *spatial]`` and
    ``d[key + class_ids_postfix]`` their class ids ``[P]``."""

    backend = LabelToBinaryTargets.backend

    def __init__(
        self,
        keys: KeysCollection,
        classes: Sequence[int] | None = None,
        min_foreground: int = 1,
        dtype: DtypeLike | torch.dtype = np.float32,
        class_ids_postfix: str = "_class_ids",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToBinaryTargets(classes, min_foreground, dtype)
        self.class_ids_postfix = class_ids_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[f"{key}{self.class_ids_postfix}"] = self.converter(d[key])
        return d


class BratsRegionsd(MapTransform):
    """Dictionary version of :class:`BratsRegions`."""

    backend = BratsRegions.backend

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | int | Mapping[str, Sequence[int]],
        dtype: DtypeLike | torch.dtype = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsRegions(convention, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


LabelToBinaryTargetsD = LabelToBinaryTargetsDict = LabelToBinaryTargetsd
BratsRegionsD = BratsRegionsDict = BratsRegionsd


class ClassChannels(Transform):
    """Label map ``[1, *spatial]`` -> one binary channel per configured class ``[K, *spatial]`` (float32).

    Unlike :class:`~monai_cbo.transforms.LabelToBinaryTargets`, every class gets its channel whether present or
    not, and label values that are not configured count as background (TotalSegmentator maps hold >100
    classes; a bundle trains a few). Float labels are rounded.

    Args:
        classes: label values, one channel each, in channel order.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, classes: Sequence[int]) -> None:
        if not classes:
            raise ValueError("classes must name at least one label value")
        self.classes = [int(c) for c in classes]

    def __call__(self, label: NdarrayOrTensor) -> torch.Tensor:
        if label.ndim < 2 or label.shape[0] != 1:
            raise ValueError(f"ClassChannels expects a label map [1, *spatial], got shape {tuple(label.shape)}")
        lab = torch.round(convert_to_tensor(label, track_meta=False))
        out = torch.cat([(lab == c) for c in self.classes]).float()
        return out if not hasattr(label, "meta") else type(label)(out, meta=label.meta)


class ClassChannelsd(MapTransform):
    """Dictionary version of :class:`ClassChannels`."""

    backend = ClassChannels.backend

    def __init__(self, keys: KeysCollection, classes: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ClassChannels(classes)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ChannelsToLabelMap(Transform):
    """Binary channels ``[K, *spatial]`` -> label map ``[1, *spatial]``: channel k writes ``values[k]``, later
    channels over earlier ones. For nested BraTS regions ordered (WT, TC, ET) with values (2, 1, 4) this
    rebuilds the 2021 label convention (edema 2, necrotic core 1, enhancing 4)."""

    backend = [TransformBackends.TORCH]

    def __init__(self, values: Sequence[int], threshold: float = 0.5) -> None:
        self.values = [int(v) for v in values]
        self.threshold = threshold

    def __call__(self, channels: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(channels, track_meta=False)
        if x.shape[0] != len(self.values):
            raise ValueError(f"{x.shape[0]} channels but {len(self.values)} label values {self.values}")
        dtype = torch.uint8 if max(self.values) < 256 and min(self.values) >= 0 else torch.int16
        out = torch.zeros((1, *x.shape[1:]), dtype=dtype, device=x.device)
        for k, v in enumerate(self.values):
            out[0][x[k] > self.threshold] = v
        return out if not hasattr(channels, "meta") else type(channels)(out, meta=channels.meta)


class ChannelsToLabelMapd(MapTransform):
    """Dictionary version of :class:`ChannelsToLabelMap`."""

    backend = ChannelsToLabelMap.backend

    def __init__(
        self, keys: KeysCollection, values: Sequence[int], threshold: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ChannelsToLabelMap(values, threshold)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
