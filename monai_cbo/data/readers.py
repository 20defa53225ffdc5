"""A MONAI image reader backed by SimpleITK: NRRD, MetaImage and DICOM series folders.

MONAI's own readers for these formats need ITK or pydicom; SimpleITK is already a dependency. Arrays come
out in (x, y, z) voxel order like MONAI's NibabelReader, with a RAS affine (ITK's LPS flipped), so the
rest of the pipeline treats every format alike.

SimpleITK (about 50 MB) is imported only when such a file or folder is read: NIfTI-only work (training,
benchmarks, the GPU check) runs without it installed, and a NRRD / DICOM read then says how to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SimpleITKReader", "is_dicom_folder"]

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def _simpleitk(path: str | Path):
    """The SimpleITK module, imported on first use; ValueError naming ``path`` and the fix if it is missing."""
    try:
        import SimpleITK as sitk
    except ImportError as err:
        raise ValueError(
            f"{path}: reading NRRD, MetaImage or DICOM needs SimpleITK, which is not installed; install it "
            "(pip install SimpleITK) or convert the image to NIfTI"
        ) from err
    return sitk


def is_dicom_folder(path: str | Path) -> bool:
    """True for a directory holding a DICOM series (files SimpleITK's GDCM reader recognises)."""
    path = Path(path)
    if not path.is_dir():
        return False
    sitk = _simpleitk(path)
    # GDCM prints "No Series were found" for every folder of NIfTI files it is asked about: a question, not an error
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


class SimpleITKReader(ImageReader):
    """Read NRRD / MetaImage files and DICOM series folders with SimpleITK.

    Args:
        series_id: which series to read from a DICOM folder with several; default the first, and a folder
            with more than one series raises ValueError listing them unless this is given.
    """

    def __init__(self, series_id: str | None = None) -> None:
        super().__init__()
        self.series_id = series_id

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(str(f).lower().endswith(SUFFIXES) or is_dicom_folder(f) for f in ensure_tuple(filename))

    def _read_one(self, path: Path):
        sitk = _simpleitk(path)

        if path.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise ValueError(f"{path} is a folder without a DICOM series; point at a series folder or a file")
            if self.series_id is None and len(ids) > 1:
                raise ValueError(f"{path} holds {len(ids)} DICOM series {list(ids)}; choose one with series_id")
            sid = self.series_id or ids[0]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid))
            return reader.Execute()
        return sitk.ReadImage(str(path))

    def read(self, data: Sequence[str] | str, **kwargs):
        images = []
        for f in ensure_tuple(data):
            path = Path(f)
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            try:
                images.append(self._read_one(path))
            except RuntimeError as err:  # SimpleITK raises RuntimeError for unreadable files
                raise ValueError(
                    f"cannot read {path}: {str(err).strip().splitlines()[-1]}; the file is corrupt or truncated: "
                    "re-export or re-copy it"
                ) from err
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk  # read() has imported it already

        arrays, meta = [], {}
        for image in img if isinstance(img, list) else [img]:
            dim = image.GetDimension()
            array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
            channels = image.GetNumberOfComponentsPerPixel() > 1
            spatial = array.ndim - int(channels)
            array = np.transpose(array, (*range(spatial - 1, -1, -1), *([spatial] if channels else [])))
            direction = np.asarray(image.GetDirection()).reshape(dim, dim)
            affine = np.eye(dim + 1)
            affine[:dim, :dim] = direction * np.asarray(image.GetSpacing())
            affine[:dim, dim] = image.GetOrigin()
            flip = np.diag([-1.0, -1.0] + [1.0] * (dim - 1))  # LPS -> RAS
            affine = flip @ affine
            arrays.append(array)
            meta = {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if channels else float("nan"),
                "spacing": np.asarray(image.GetSpacing()),
            }
        if len(arrays) > 1:
            return np.stack(arrays, axis=0), {**meta, MetaKeys.ORIGINAL_CHANNEL_DIM: 0}
        return arrays[0], meta
