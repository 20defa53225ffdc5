"""SimpleITK is imported only to read NRRD / MetaImage / DICOM: NIfTI work (and the GPU machine) runs without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]

# every module the bundles import (configs' "imports"), the bench, the command line, then a NIfTI segmentation
_PROGRAM = """
import json, sys
import monai_cbo, monai_cbo.bench, monai_cbo.cli, monai_cbo.data, monai_cbo.models, monai_cbo.training
import monai_cbo.handlers, monai_cbo.inferers.engine, monai_cbo.losses, monai_cbo.timing.gpu_check
import monai_cbo.transforms, monai_cbo.utils
after_import = "SimpleITK" in sys.modules
code = monai_cbo.cli.main(["segment", sys.argv[1], "-o", sys.argv[2], "--label", sys.argv[3], "--model", "tiny"])
print(json.dumps({"code": code, "after_import": after_import, "after_segment": "SimpleITK" in sys.modules}))
"""


def test_importing_and_segmenting_a_nifti_does_not_import_simpleitk(tmp_path):
    image = np.random.default_rng(0).normal(size=(24, 20, 6)).astype(np.float32)
    label = np.zeros((24, 20, 6), dtype=np.uint8)
    label[5:15, 4:12, 1:5] = 1
    for name, array in (("image.nii.gz", image), ("label.nii.gz", label)):
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0])), tmp_path / name)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROGRAM,
            str(tmp_path / "image.nii.gz"),
            str(tmp_path / "out"),
            str(tmp_path / "label.nii.gz"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"code": 0, "after_import": False, "after_segment": False}
    assert (tmp_path / "out" / "image_seg.nii.gz").is_file()
