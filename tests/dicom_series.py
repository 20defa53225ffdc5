"""Write a small DICOM series with SimpleITK, for the tests that read one (the caller skips without SimpleITK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_series(sitk, folder: Path, array: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(0.0, 0.0, 0.0)) -> Path:
    """``array`` (z, y, x) int16 as one file per slice in ``folder`` (created), with the geometry tags a reader
    needs (position, orientation, spacing, instance number); returns ``folder``."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[0]):
        sl = image[:, :, z]
        for tag, value in (
            ("0010|0010", "TEST"),
            ("0020|000e", "1.2.3.4"),
            ("0020|000d", "1.2.3"),
            ("0020|0013", str(z + 1)),
            ("0008|0060", "CT"),
            ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z))))),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0018|0050", str(spacing[2])),
            ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
        ):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(sl)
    return folder
