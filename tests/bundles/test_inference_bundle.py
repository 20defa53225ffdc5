"""inference.json: unlabelled volumes + prompts -> NIfTI masks; a bad case fails the run but not the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "bundles" / "spleen_ct_cbo" / "configs" / "inference.json"


def test_inference_bundle_segments_each_case_from_its_prompt_file(tmp_path):
    images, prompts, out = tmp_path / "images", tmp_path / "prompts", tmp_path / "out"
    images.mkdir()
    prompts.mkdir()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for name in ("a", "b"):
        volume = np.random.default_rng(0).normal(40, 20, size=(32, 28, 6)).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, affine), images / f"{name}.nii.gz")
        (prompts / f"{name}.json").write_text(
            json.dumps({"prompts": [{"label": 1, "box3d": [4, 4, 1, 20, 18, 4]}]}), encoding="utf-8"
        )
    (images / "broken.nii.gz").write_bytes(b"not a nifti")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIG),
        "--input",
        str(images),
        "--prompts",
        str(prompts),
        "--output_dir",
        str(out),
        "--adapter",
        "",
        "--model#name",
        "tiny",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode != 0  # one case failed ...
    assert "FAILED broken" in result.stderr and "2 of 3 case(s) segmented" in result.stdout
    for name in ("a", "b"):  # ... and the others were still written, in their input geometry
        mask = nib.load(out / f"{name}_seg.nii.gz")
        assert mask.shape == (32, 28, 6) and np.allclose(mask.affine, affine)
