"""The real-data demo's parts that run in seconds: which cases it takes, its errors, its overlays.

The whole demo (minutes: three segmentation runs and a fine-tune) is run by hand; its output is in the README.
"""

from __future__ import annotations

import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from monai_cbo import demo
from monai_cbo.cli import main
from monai_cbo.inferers import Preprocess


def _case(root, name, label=True):
    for sub in ("imagesTr", "labelsTr") if label else ("imagesTr",):
        (root / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), root / sub / f"{name}.nii.gz")


def test_demo_takes_only_held_out_cases_with_labels_in_the_adapters_order(tmp_path):
    for name in ("c1", "c2", "c3", "c4"):
        _case(tmp_path, name)
    _case(tmp_path, "c5", label=False)
    assert demo.pick_held_out(tmp_path, ["c4", "c5", "c9", "c2", "c1"], 3) == ["c4", "c2", "c1"]
    assert demo.pick_held_out(tmp_path, ["c4", "c2", "c1", "c3"], 2) == ["c4", "c2"]
    with pytest.raises(FileNotFoundError, match=r"needs 4 labelled cases .* found 3; point --data at an MSD"):
        demo.pick_held_out(tmp_path, ["c4", "c5", "c2", "c1"], 4)


def test_demo_on_a_folder_without_the_cases_fails_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        demo, "load_bundle", lambda name: type("B", (), {"record": {"held_out_cases": ["h1"]}, "adapter": "a"})()
    )
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "imagesTr/<case>.nii.gz" in err and "CC-BY-SA" in err
    assert not (tmp_path / "o").exists()
    assert main(["demo", "--data", str(tmp_path), "--samples", "3"]) == 2
    assert "at least 4" in capsys.readouterr().err


def test_overlay_shows_the_largest_label_slice_one_row_per_mask(tmp_path):
    image = np.zeros((12, 10, 5), np.float32)
    image[2:8, 3:7, :] = 100.0
    label = np.zeros((12, 10, 5), np.uint8)
    label[2:8, 3:7, 3] = 1  # the only labelled slice
    label[4:6, 4:6, 1] = 2
    for name, data in (("img", image), ("lab", label), ("p1", label), ("p2", np.zeros_like(label))):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "o.png"
    masks = [tmp_path / "p1.nii.gz", tmp_path / "p2.nii.gz"]
    demo._overlay(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", masks, Preprocess("mri"), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    scale = 192 // 12  # each panel is the slice shown with rows = the second axis, flipped: 10 x 12
    assert (width, height) == ((3 * 12 + 4) * scale, 2 * 10 * scale + 6)  # 3 panels side by side, 2 rows
    idat = data[33 + 8 : data.index(b"IEND") - 4 - 4]  # IHDR is 25 bytes after the signature; one IDAT chunk
    rgb = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)
    panel = lambda row, col: rgb[row * (10 * scale + 6) :][: 10 * scale, col * 14 * scale :][:, : 12 * scale]  # noqa: E731
    green = lambda p: int(((p[..., 1] == 200) & (p[..., 0] == 0)).sum())  # noqa: E731  the label's outline colour
    red = lambda p: int(((p[..., 0] == 230) & (p[..., 1] == 30)).sum())  # noqa: E731  the prediction's
    assert green(panel(0, 1)) > 0 and green(panel(1, 1)) > 0  # slice 3, where the label is largest, is shown
    assert red(panel(0, 2)) > 0 and red(panel(1, 2)) == 0  # first row the first mask, second row the empty one


def test_demos_run_the_commands_a_user_would_type(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(demo, "_step", lambda title, cmd: steps.append(cmd))
    assert main(["demo", "--out", str(tmp_path / "o")]) == 0
    make, train, evaluate = steps
    assert make[1:3] == ["data_prep/make_demo_data.py", str(tmp_path / "o" / "data")]
    assert train[1:5] == ["-m", "monai.bundle", "run", "training"] and train[6].endswith(
        "spleen_ct_cbo/configs/train.json"
    )
    options = dict(zip(train[7::2], train[8::2], strict=True))
    assert options == {
        "--dataset_dir": str(tmp_path / "o" / "data"),
        "--output_dir": str(tmp_path / "o"),
        "--peft#preset": "lora_cbo",
        "--seed": "0",
        "--max_epochs": "4",
        "--val_interval": "2",
        "--batch_size": "1",
        "--slices_per_volume": "2",
        "--auto_share": "0",
    }
    assert evaluate[5].endswith("evaluate.json']") and evaluate[-2:] == ["--overwrite", "true"]
