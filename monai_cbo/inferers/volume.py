"""Volumes in, masks out: read a volume, prepare it for a 2D model, segment it slice-wise, write NIfTI.

Geometry: the volume is never resampled or reoriented. Slices are taken along one stored voxel axis
(by default the one closest to the patient's superior axis, i.e. axial), each slice is resized to the model
input and the prediction is resized back exactly, so the written mask has the input's shape and affine by
construction, with nothing to invert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from ..data.readers import SimpleITKReader, is_dicom_folder
from ..transforms import CTWindow, MRIPercentileScale, ToModelChannels
from ..utils import write_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "Preprocess",
    "axial_axis",
    "case_name",
    "load_volume",
    "prepare_volume",
    "save_label_map",
    "to_sliced",
    "to_stored_order",
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

    NIfTI through nibabel; NRRD, MetaImage and DICOM series folders through SimpleITK.

    Raises:
        FileNotFoundError: a file is missing. ValueError: unreadable, or not a 3D image.
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
    reader = "NibabelReader" if nifti else SimpleITKReader()
    try:
        image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)([str(p) for p in paths])
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # nibabel / zlib / SimpleITK errors for corrupt or truncated files
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        names = ", ".join(map(str, paths))
        raise ValueError(f"cannot read {names}: {detail}; the file is corrupt or truncated") from err
    if image.ndim != 4:
        raise ValueError(
            f"{paths[0]} has {image.ndim - 1} spatial dimensions (shape {tuple(image.shape[1:])}); "
            "a 3D volume is needed (a 4D file holds channels: choose them with --channels)"
        )
    return image


def axial_axis(affine: np.ndarray) -> int:
    """The stored voxel axis closest to the world superior-inferior axis."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3]) / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))


@dataclass
class Preprocess:
    """How a volume becomes model input.

    Args:
        modality: ``"ct"`` (HU window), ``"mri"`` (per-channel 0.5-99.5 percentile scaling) or ``"auto"``
            (CT when the 0.5th percentile is below -200, i.e. air in HU; MRI otherwise).
        ct_window: HU window for CT. Default (-500, 1000).
        channels: input channels mapped to the model's 3 (see :class:`~monai_cbo.transforms.ToModelChannels`).
        slice_axis: stored voxel axis to slice along (0, 1, 2) or ``"auto"`` (axial, from the affine).
    """

    modality: str = "auto"
    ct_window: tuple[float, float] = (-500.0, 1000.0)
    channels: Sequence[int] | None = None
    slice_axis: int | str = "auto"

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; choose one of {MODALITIES}")
        if self.slice_axis != "auto" and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1, 2 or 'auto', got {self.slice_axis!r}")


def prepare_volume(image: MetaTensor, pre: Preprocess) -> tuple[torch.Tensor, int]:
    """``[C, X, Y, Z]`` -> (``[3, H, W, D]`` float32 in [0, 1] with the slicing axis last, slicing axis)."""
    image = ToModelChannels(pre.channels)(image)
    data = torch.as_tensor(image.as_tensor() if isinstance(image, MetaTensor) else image, dtype=torch.float32)
    modality = pre.modality
    if modality == "auto":
        finite = data[torch.isfinite(data)]
        low = float(torch.quantile(finite[:: max(1, finite.numel() // 1_000_000)], 0.005)) if finite.numel() else 0.0
        modality = "ct" if low < -200 else "mri"
    data = (CTWindow(*pre.ct_window) if modality == "ct" else MRIPercentileScale())(data)
    axis = axial_axis(image.affine.numpy()) if pre.slice_axis == "auto" else int(pre.slice_axis)
    return data.permute(0, *[a + 1 for a in _sliced_order(axis)]).contiguous(), axis


def _sliced_order(slice_axis: int) -> list[int]:
    return [a for a in range(3) if a != slice_axis] + [slice_axis]


def to_sliced(labels: np.ndarray, slice_axis: int) -> np.ndarray:
    """A stored-order map ``[X, Y, Z]`` with its slicing axis moved last, as :func:`prepare_volume` does."""
    return np.transpose(labels, _sliced_order(slice_axis))


def to_stored_order(labels: np.ndarray, slice_axis: int) -> np.ndarray:
    """Undo :func:`to_sliced` for a map ``[H, W, D]`` (slicing axis last)."""
    return np.transpose(labels, np.argsort(_sliced_order(slice_axis)))


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
