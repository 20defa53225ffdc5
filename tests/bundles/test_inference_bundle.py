"""inference.json: unlabelled volumes + prompts -> NIfTI masks; a bad case fails the run but not the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

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


def test_inference_bundle_runs_the_encoder_on_openvino_and_writes_torchs_masks(tmp_path):
    """On the CPU the bundle's inferer takes the encoder runtime `segment` takes ($MONAI_CBO_ENCODER_RUNTIME, or
    --encoder_runtime on the command line): the same masks as torch, the model converted once into the cache."""
    pytest.importorskip("openvino", reason='the openvino extra is not installed: pip install "monai-cbo[openvino]"')
    images = tmp_path / "images"
    images.mkdir()
    volume = np.random.default_rng(1).normal(40, 20, size=(32, 28, 5)).astype(np.int16)
    volume[8:20, 8:18, 1:4] += 150  # a bright block for the box to find
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), images / "a.nii.gz")
    cache = tmp_path / "cache"

    def run(runtime: str, out: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--input", str(images),
               "--key_box", "[6, 6, 1, 22, 20, 3]", "--output_dir", str(tmp_path / out), "--adapter", "",
               "--model#name", "tiny", "--encoder_runtime", runtime, "--device", "$torch.device('cpu')"]  # fmt: skip
        env = {**os.environ, "MONAI_CBO_CACHE": str(cache)}
        return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", env=env)

    torch_run, ov_run = run("torch", "torch"), run("openvino", "ov")
    assert torch_run.returncode == 0 and ov_run.returncode == 0, ov_run.stderr[-2000:]
    assert "image encoder on openvino (f32" in ov_run.stdout and "openvino" not in torch_run.stdout
    assert len(list((cache / "openvino").iterdir())) == 1
    masks = [np.asarray(nib.load(tmp_path / d / "a_seg.nii.gz").dataobj) for d in ("torch", "ov")]
    assert masks[0].any() and (masks[0] != masks[1]).mean() < 0.001
