"""Fixtures of the dataset-script tests: real data folders and a NIfTI writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from realdata import shared_data as _shared


@pytest.fixture
def hippocampus() -> Path:
    """The shared MSD Task04_Hippocampus folder (208 cases, no dataset.json)."""
    return _shared("Task04_Hippocampus")


@pytest.fixture
def brats2015() -> Path:
    """The shared BRATS 2015 deepmedic folder (4 cases, Flair + T1c)."""
    return _shared("BraTS2015_deepmedic")


@pytest.fixture
def totalseg_examples() -> Path:
    """The shared TotalSegmentator example images, label maps and class map."""
    return _shared("TotalSegmentator_examples")


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, value=0)``: a tiny 4 x 4 x 3 NIfTI volume at ``path`` (folders created)."""

    def write(path: Path, value: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.full((4, 4, 3), value, dtype=np.uint8), np.eye(4)), path)
        return path

    return write
