"""Volumes in, masks out: read a volume, prepare it for a 2D model, segment it slice-wise, write NIfTI.

Geometry: the volume is never resampled. It is reoriented to RAS by axis permutations and flips only (the
orientation the bundles train in) and sliced axially by default; each slice is resized to the model input
and the prediction resized back exactly, then the permutation is undone, so the written mask has the
input's shape and affine exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage, LoadImaged, MapTransform, Orientationd

from ..data.readers import SimpleITKReader, is_dicom_folder
from ..transforms import (
    DEFAULT_CT_WINDOW,
    CTWindow,
    CTWindowd,
    MRIPercentileScale,
    MRIPercentileScaled,
    ToModelChannels,
    ToModelChannelsd,
)
from ..utils import write_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "Preprocess",
    "SliceGeometry",
    "case_name",
    "decide_modality",
    "modality_mismatch",
    "load_volume",
    "prepare_volume",
    "save_label_map",
    "source_name",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MODALITIES = ("auto", "ct", "mri")


def case_name(path: str | Path) -> str:
    """File name without its image suffix (``case_001.nii.gz`` -> ``case_001``); a DICOM folder's name."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: str | Path | Sequence[str | Path]) -> MetaTensor:
    """Load a 3D image as a channel-first MetaTensor ``[C, X, Y, Z]`` (several files stack as channels).

    NIfTI through nibabel; NRRD, MetaImage and DICOM series folders through SimpleITK. Several files (the
    modalities of one case) must have one shape.

    Raises:
        FileNotFoundError: a file is missing. ValueError: empty, unreadable (corrupt or truncated), files of
            different shapes, or not a 3D image. Every message names the file and what to do.
    """
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; check the path (a folder must be a DICOM series)")
        if p.is_dir() and not is_dicom_folder(p):
            raise ValueError(f"{p} is a folder without a DICOM series; give an image file or a series folder")
        if p.is_file() and p.stat().st_size == 0:
            raise ValueError(f"{p} is empty (0 bytes); re-export or re-copy the image")
    nifti = all(p.name.lower().endswith((".nii", ".nii.gz")) for p in paths)
    reader = NibabelReader() if nifti else SimpleITKReader()
    try:
        # the reader is given per call so that LoadImage does not fall back to its other readers, whose
        # errors would hide the real one
        image = LoadImage(image_only=True, ensure_channel_first=True)([str(p) for p in paths], reader=reader)
    except Exception as err:  # nibabel / zlib / SimpleITK errors for corrupt or truncated files
        if type(err) in (FileNotFoundError, ValueError) and any(str(p) in str(err) for p in paths):
            raise  # our own reader's message, which names the file and what to do (SimpleITKReader)
        if len(paths) > 1:
            _check_same_shapes(paths)  # reads each file alone: names the one that is broken, or the mismatch
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        names = ", ".join(map(str, paths))
        raise ValueError(
            f"cannot read {names}: {detail}; the file is corrupt or truncated: re-export or re-copy it"
        ) from err
    if image.ndim != 4:
        raise ValueError(
            f"{paths[0]} has {image.ndim - 1} spatial dimensions (shape {tuple(image.shape[1:])}); "
            "a 3D volume is needed: give a 3D image, or a 4D file whose last axis holds channels (choose them "
            "with --channels)"
        )
    linear = np.asarray(image.meta.get("original_affine", image.affine), dtype=np.float64)[:3, :3]
    if not np.isfinite(linear).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError(
            f"{', '.join(map(str, paths))} has a degenerate affine (voxel-to-world matrix {linear.tolist()}): its "
            "header's orientation and spacing are broken, so no box, point or mask can be placed in it; fix the "
            "header (re-export the image, or set its sform / qform) and try again"
        )
    return image


def _check_same_shapes(paths: Sequence[Path]) -> None:
    """Load each file alone (re-raising its own error) and raise ValueError if their shapes differ."""
    shapes = {p: tuple(load_volume(p).shape[1:]) for p in paths}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{p} {s}" for p, s in shapes.items())
        raise ValueError(
            f"the image files of one case have different shapes: {listed}; the modalities of a case must be on "
            "one voxel grid: resample (register) them onto one image first"
        )


VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class SliceGeometry:
    """How a stored volume maps onto the sliced view the model sees, and back, exactly.

    The sliced view is the volume reoriented to RAS (as the bundles' ``Orientationd`` does in training) with
    the slicing axis moved last: ``[H, W, D]``. Only axis permutations and flips are involved, so
    :meth:`to_stored` restores the stored array bit for bit.
    """

    stored_shape: tuple[int, int, int]
    transform: np.ndarray  # nibabel orientation transform, stored axes -> sliced axes

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: Sequence[int], slice_axis: int = 2) -> SliceGeometry:
        """``slice_axis`` is a RAS axis: 0 sagittal (R), 1 coronal (A), 2 axial (S)."""
        ras = [a for a in range(3) if a != slice_axis] + [slice_axis]
        end = nib.orientations.axcodes2ornt(tuple("RAS"[a] for a in ras))
        start = nib.orientations.io_orientation(np.asarray(affine))
        return cls(tuple(int(v) for v in shape[:3]), nib.orientations.ornt_transform(start, end))

    @property
    def sliced_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for axis, (target, _) in enumerate(self.transform):
            out[int(target)] = self.stored_shape[axis]
        return tuple(out)

    def to_sliced(self, array: np.ndarray) -> np.ndarray:
        """A stored ``[X, Y, Z, ...]`` array in the sliced view ``[H, W, D, ...]``."""
        return nib.orientations.apply_orientation(np.asarray(array), self.transform)

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """Undo :meth:`to_sliced`."""
        inverse = np.zeros_like(self.transform)
        for axis, (target, flip) in enumerate(self.transform):
            inverse[int(target)] = (axis, flip)
        return np.ascontiguousarray(nib.orientations.apply_orientation(np.asarray(array), inverse))

    def voxels_to_sliced(self, coords: np.ndarray) -> np.ndarray:
        """Stored voxel coordinates ``[N, 3]`` (float) -> coordinates in the sliced view."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(coords)
        for axis, (target, flip) in enumerate(self.transform):
            c = coords[:, axis]
            out[:, int(target)] = self.stored_shape[axis] - 1 - c if flip < 0 else c
        return out


@dataclass
class Preprocess:
    """How a volume becomes model input.

    Args:
        modality: ``"ct"`` (HU window), ``"mri"`` (per-channel 0.5-99.5 percentile scaling) or ``"auto"``
            (CT when the 0.5th percentile is below -200, i.e. air in HU; MRI otherwise).
        ct_window: HU window for CT (lowest, highest). Default :data:`~monai_cbo.transforms.DEFAULT_CT_WINDOW`.
        channels: input channels mapped to the model's 3 (see :class:`~monai_cbo.transforms.ToModelChannels`).
        view: slicing direction in RAS, ``"axial"`` (default, as the bundles train), ``"coronal"`` or
            ``"sagittal"``; or 0 / 1 / 2 (the RAS axis).
        mri_percentiles: for MRI, the percentiles of each channel that map to 0 and 1. Default (0.5, 99.5).
    """

    modality: str = "auto"
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    channels: Sequence[int] | None = None
    view: str | int = "axial"
    mri_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; choose one of {MODALITIES}")
        if self.view not in VIEWS and self.view not in (0, 1, 2):
            raise ValueError(f"view must be one of {list(VIEWS)} or 0, 1, 2 (RAS axis), got {self.view!r}")

    @property
    def slice_axis(self) -> int:
        return VIEWS.get(self.view, self.view)

    @staticmethod
    def _decided(modality: str) -> str:
        """``modality`` when it names one scaling ("ct" or "mri"); "auto" is decided per volume, for inference."""
        if modality not in ("ct", "mri"):
            raise ValueError(
                "training needs the modality of its volumes: set the task's preprocess modality to 'ct' or 'mri' "
                "('auto' decides per volume, for inference only)"
            )
        return modality

    def intensity(self, modality: str | None = None) -> CTWindow | MRIPercentileScale:
        """The intensity scaling of ``modality`` (default this one's; ``"auto"`` must be decided first)."""
        if self._decided(modality or self.modality) == "ct":
            return CTWindow(*self.ct_window)
        return MRIPercentileScale(*self.mri_percentiles)

    def load_transforms(self, keys: Sequence[str] = ("image", "label")) -> list[MapTransform]:
        """The MONAI transform chain that reads ``keys`` and prepares ``keys[0]`` as :func:`prepare_volume` does
        (for training: reoriented to RAS, scaled, mapped to the model's channels), on dictionaries."""
        keys, image = list(keys), keys[0]
        if self.slice_axis != VIEWS["axial"]:
            raise ValueError(f"training slices axially; a task's view must be 'axial', got {self.view!r}")
        modality = self._decided(self.modality)
        scale = (
            CTWindowd(image, *self.ct_window) if modality == "ct" else MRIPercentileScaled(image, *self.mri_percentiles)
        )
        return [
            LoadImaged(keys, image_only=True, ensure_channel_first=True),
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            scale,
            ToModelChannelsd(image, self.channels),
        ]


def source_name(image) -> str:
    """The file an image was read from, for messages."""
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj") or "(in memory)")


def _lowest_half_percent(data: torch.Tensor) -> float:
    """The 0.5th percentile of the finite values (of at most a million of them, evenly strided); 0 if none."""
    data = torch.as_tensor(data, dtype=torch.float32)  # no copy for float32 input
    finite = data[torch.isfinite(data)]
    return float(torch.quantile(finite[:: max(1, finite.numel() // 1_000_000)], 0.005)) if finite.numel() else 0.0


def decide_modality(data: torch.Tensor) -> str:
    """``"ct"`` when the image holds air in HU (its 0.5th percentile of finite values below -200), else ``"mri"``:
    what ``Preprocess(modality="auto")`` decides per volume."""
    return "ct" if _lowest_half_percent(data) < -200 else "mri"


def modality_mismatch(data: torch.Tensor, modality: str, source: str) -> str | None:
    """A warning when ``data`` does not look like the ``modality`` it is about to be scaled as (a bundle's or an
    option's): an MR scaled with a CT window, or a CT in HU scaled by MRI percentiles. An adapter trained on one
    modality segments the other badly (a CT adapter on an MR: box on every slice 0.82 -> 0.35,
    docs/benchmarks/fewshot.md). None when it looks right, or for ``auto``."""
    if modality not in ("ct", "mri"):
        return None
    low = _lowest_half_percent(data)
    if modality == "ct" and low >= -200:
        return (
            f"image {source} is scaled with a CT window, but holds no air in HU (its 0.5th percentile is {low:.4g}, "
            "not below -200): if it is not a CT, use a bundle trained on its modality or --modality mri (a CT "
            "adapter segments other modalities badly); a CT crop without air is fine as it is"
        )
    if modality == "mri" and low < -200:
        return (
            f"image {source} is scaled as MRI, but holds air in HU (its 0.5th percentile is {low:.4g}): if it is a "
            "CT, use a bundle trained on CT or --modality ct (an MRI adapter segments CT badly)"
        )
    return None


def prepare_volume(image: MetaTensor, pre: Preprocess) -> tuple[torch.Tensor, SliceGeometry]:
    """``[C, X, Y, Z]`` -> (``[3, H, W, D]`` float32 in [0, 1] in the sliced view, its :class:`SliceGeometry`).

    Never outputs NaN. Non-finite voxels (NaN, +-Inf) are kept out of the automatic CT / MRI decision and the
    MRI percentiles; NaN and -Inf then map to 0 (the lowest intensity) and +Inf to 1, with a warning naming
    the file. A constant image is a safe input: it becomes all zeros (MRI: an empty percentile window) or its
    constant place in the CT window; no division by zero.

    Raises:
        ValueError: the image's channels do not fit ``pre.channels`` (the message names the file).
    """
    source = source_name(image)
    try:
        image = ToModelChannels(pre.channels)(image)
    except ValueError as err:
        raise ValueError(f"image {source}: {err} (--channels on the command line)") from None
    data = torch.as_tensor(image.as_tensor() if isinstance(image, MetaTensor) else image, dtype=torch.float32)
    bad = int((~torch.isfinite(data)).any(dim=0).sum())  # voxels with a non-finite value in a used channel
    if bad:
        warnings.warn(
            f"image {source} has {bad} NaN / Inf voxel(s): NaN and -Inf are treated as the lowest intensity and "
            "+Inf as the highest; replace them in the file (e.g. numpy.nan_to_num) if they mean something else",
            stacklevel=2,
        )
    modality = decide_modality(data) if pre.modality == "auto" else pre.modality
    mismatch = modality_mismatch(data, pre.modality, source)
    if mismatch:
        warnings.warn(mismatch, stacklevel=2)
    data = pre.intensity(modality)(data)
    geometry = SliceGeometry.from_affine(image.affine.numpy(), data.shape[1:], pre.slice_axis)
    sliced = np.stack([geometry.to_sliced(c) for c in np.asarray(data)])
    return torch.from_numpy(np.ascontiguousarray(sliced)), geometry


def save_label_map(labels: np.ndarray, image: MetaTensor, path: str | Path, overwrite: bool = False) -> Path:
    """Write a label map ``[X, Y, Z]`` as NIfTI with the input image's affine, atomically.

    A NIfTI input's header (qform / sform codes, units) is carried over, so the mask overlays the image
    in any viewer.
    """
    affine = np.asarray(image.meta.get("original_affine", image.affine))
    source = image.meta.get("filename_or_obj")
    header = None
    if isinstance(source, str) and source.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(source).header.copy()
        header.set_data_dtype(labels.dtype)
        header.set_slope_inter(1, 0)

    def write(tmp: Path) -> None:
        nib.save(nib.Nifti1Image(labels, affine, header=header), tmp)

    return write_atomic(path, write, overwrite)
