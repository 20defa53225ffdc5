"""Volumetric MONAI transforms for SAM: modality presets, volume -> slices, targets and prompts, resize/pad.

Array transforms take channel-first data (``[C, *spatial]``, slices ``[C, H, W]``); each has a dictionary twin
(``...d`` with ``...D`` / ``...Dict`` aliases). A typical training chain::

    LoadImaged -> EnsureChannelFirstd -> canonical_orientation_transforms -> MRIPercentileScaled / CTWindowd
    -> RandSampleSlicesd -> ToModelChannelsd -> LabelToBinaryTargetsd (or BratsRegionsd)
    -> ResizeLongestSidePadd -> BoxFromMaskd / PointsFromMaskd
"""

from __future__ import annotations

from .channels import ToModelChannels, ToModelChannelsD, ToModelChannelsd, ToModelChannelsDict
from .intensity import (
    DEFAULT_CT_WINDOW,
    CTWindow,
    CTWindowD,
    CTWindowd,
    CTWindowDict,
    MRIPercentileScale,
    MRIPercentileScaleD,
    MRIPercentileScaled,
    MRIPercentileScaleDict,
)
from .labels import (
    BRATS_CONVENTIONS,
    BratsRegions,
    BratsRegionsD,
    BratsRegionsd,
    BratsRegionsDict,
    ChannelsToLabelMap,
    ChannelsToLabelMapd,
    ClassChannels,
    ClassChannelsd,
    LabelToBinaryTargets,
    LabelToBinaryTargetsD,
    LabelToBinaryTargetsd,
    LabelToBinaryTargetsDict,
)
from .prompts import (
    BoxFromMask,
    BoxFromMaskD,
    BoxFromMaskd,
    BoxFromMaskDict,
    PointsFromMask,
    PointsFromMaskD,
    PointsFromMaskd,
    PointsFromMaskDict,
    grow_box,
)
from .resize import (
    ResizeLongestSidePad,
    ResizeLongestSidePadD,
    ResizeLongestSidePadd,
    ResizeLongestSidePadDict,
    resized_shape,
    restore_slice,
    scale_coords,
)
from .slicing import (
    RandSampleSlices,
    RandSampleSlicesD,
    RandSampleSlicesd,
    RandSampleSlicesDict,
    canonical_orientation_transforms,
    move_slice_axis,
)
from .training import IGNORE, SlicePromptsd

__all__ = [
    "DEFAULT_CT_WINDOW",
    "IGNORE",
    "ChannelsToLabelMap",
    "ChannelsToLabelMapd",
    "ClassChannels",
    "ClassChannelsd",
    "SlicePromptsd",
    "BRATS_CONVENTIONS",
    "BoxFromMask",
    "grow_box",
    "BoxFromMaskD",
    "BoxFromMaskDict",
    "BoxFromMaskd",
    "BratsRegions",
    "BratsRegionsD",
    "BratsRegionsDict",
    "BratsRegionsd",
    "CTWindow",
    "CTWindowD",
    "CTWindowDict",
    "CTWindowd",
    "LabelToBinaryTargets",
    "LabelToBinaryTargetsD",
    "LabelToBinaryTargetsDict",
    "LabelToBinaryTargetsd",
    "MRIPercentileScale",
    "MRIPercentileScaleD",
    "MRIPercentileScaleDict",
    "MRIPercentileScaled",
    "PointsFromMask",
    "PointsFromMaskD",
    "PointsFromMaskDict",
    "PointsFromMaskd",
    "RandSampleSlices",
    "RandSampleSlicesD",
    "RandSampleSlicesDict",
    "RandSampleSlicesd",
    "ResizeLongestSidePad",
    "ResizeLongestSidePadD",
    "ResizeLongestSidePadDict",
    "ResizeLongestSidePadd",
    "ToModelChannels",
    "ToModelChannelsD",
    "ToModelChannelsDict",
    "ToModelChannelsd",
    "canonical_orientation_transforms",
    "move_slice_axis",
    "resized_shape",
    "restore_slice",
    "scale_coords",
]
