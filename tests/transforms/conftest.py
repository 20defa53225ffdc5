"""Real volumes for the transform tests, read from ../shared/data beside the checkout (skipped if absent)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from realdata import shared_data as data_path


def load(*parts: str) -> np.ndarray:
    """A NIfTI volume as stored (dtype kept), with a leading channel axis: ``[1, d0, d1, d2]``."""
    return np.asanyarray(nib.load(data_path(*parts)).dataobj)[None]


@pytest.fixture(scope="session")
def load_volume():
    """The :func:`load` helper, for tests that pick their own file."""
    return load


@pytest.fixture(scope="session")
def hippocampus() -> dict[str, np.ndarray]:
    """MSD hippocampus case 003: float32 image and float32 label file (0 background, 1 anterior, 2 posterior)."""
    name = "hippocampus_003.nii.gz"
    return {
        "image": load("Task04_Hippocampus", "imagesTr", name),
        "label": load("Task04_Hippocampus", "labelsTr", name),
    }


@pytest.fixture(scope="session")
def brats() -> dict[str, np.ndarray]:
    """BraTS 2015 case pat0003: z-scored FLAIR and T1c ``[2, 240, 240, 155]`` and labels 0..4 ``[1, ...]``."""
    case = ("BraTS2015_deepmedic", "brats_2013_pat0003_1")
    image = np.concatenate([load(*case, f"{m}_subtrMeanDivStd.nii.gz") for m in ("Flair", "T1c")])
    return {"image": image, "label": load(*case, "OTMultiClass.nii.gz")}
