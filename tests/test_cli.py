from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_cbo.cli import main


def _case(folder, name, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(24, 20, 6)).astype(np.float32)
    label = np.zeros((24, 20, 6), dtype=np.uint8)
    label[5:15, 4:12, 1:5] = 1
    label[16:20, 14:18, 2:4] = 2
    for sub, array in (("images", image), ("labels", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0])), folder / sub / f"{name}.nii.gz")


def test_folder_run_continues_past_a_bad_case_and_fails_at_the_end(tmp_path, capsys):
    _case(tmp_path, "case_a")
    _case(tmp_path, "case_b", seed=1)
    (tmp_path / "images" / "case_bad.nii.gz").write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "images"), "-o", str(out), "--label", str(tmp_path / "labels"), "--model", "tiny"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "2 of 3 case(s) segmented" in captured.out
    assert "FAILED case_bad: ValueError: cannot read" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["case_a_seg.nii.gz", "case_b_seg.nii.gz", "metrics.csv"]
    written = nib.load(out / "case_a_seg.nii.gz")
    assert written.shape == (24, 20, 6) and np.allclose(written.affine, np.diag([1.5, 1.5, 3.0, 1.0]))
    assert set(np.unique(written.get_fdata())) <= {0, 1, 2}
    csv = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv) == 1 + 4  # header + 2 cases x 2 classes


def test_existing_outputs_are_kept_without_overwrite(tmp_path, capsys):
    _case(tmp_path, "case_a")
    image, out = tmp_path / "images" / "case_a.nii.gz", tmp_path / "out"
    label = tmp_path / "labels" / "case_a.nii.gz"
    base = ["segment", str(image), "-o", str(out), "--label", str(label), "--model", "tiny"]
    assert main(base) == 0
    before = (out / "case_a_seg.nii.gz").read_bytes()
    assert main(base) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "case_a_seg.nii.gz").read_bytes() == before
    assert main([*base, "--overwrite"]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_prompt_file_and_key_slice_sources(tmp_path):
    _case(tmp_path, "case_a")
    image = str(tmp_path / "images" / "case_a.nii.gz")
    prompts = tmp_path / "case_a.json"
    prompts.write_text(json.dumps({"prompts": [{"label": 3, "box3d": [5, 4, 1, 14, 11, 4]}]}), encoding="utf-8")
    assert main(["segment", image, "-o", str(tmp_path / "p"), "--prompts", str(prompts), "--model", "tiny"]) == 0
    assert nib.load(tmp_path / "p" / "case_a_seg.nii.gz").shape == (24, 20, 6)
    key = ["segment", image, "-o", str(tmp_path / "k"), "--model", "tiny", "--class", "4"]
    assert main([*key, "--key-box", "5,4,2,14,11,2"]) == 0
    assert set(np.unique(nib.load(tmp_path / "k" / "case_a_seg.nii.gz").get_fdata())) <= {0, 4}
    with pytest.raises(SystemExit, match="2"):  # five numbers: argparse's usage error
        main([*key, "--key-box", "5,4,2,14,11", "--overwrite"])


def test_missing_input_is_reported_with_the_path(tmp_path, capsys):
    args = ["segment", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o"), "--key-box", "0,0,0,1,1,0"]
    assert main(args) == 2
    assert "nope.nii.gz does not exist" in capsys.readouterr().err


def test_several_key_boxes_a_3d_box_and_points_on_the_command_line(tmp_path, capsys):
    _case(tmp_path, "case_a")
    image = str(tmp_path / "images" / "case_a.nii.gz")
    base = ["segment", image, "--model", "tiny"]
    assert (
        main(
            [
                *base,
                "-o",
                str(tmp_path / "keys"),
                "--key-box",
                "5,4,1,14,11,1",
                "--key-box",
                "5,4,4,14,11,4",
                "--point",
                "8,8,2,0",
                "--point",
                "10,8,3,1",
            ]
        )
        == 0
    )
    # a 3D box never leaves its slices 2..3, whatever the model does
    assert main([*base, "-o", str(tmp_path / "box"), "--key-box", "5,4,2,14,11,3", "--key-slice", "3"]) == 0
    mask = nib.load(tmp_path / "box" / "case_a_seg.nii.gz").get_fdata()
    assert not mask[..., [0, 1, 4, 5]].any()
    assert main([*base, "-o", str(tmp_path / "bad"), "--key-box", "5,4,1,14,11,1", "--key-box", "6,4,1,14,11,1"]) == 1
    assert "already has a key box on slice 1" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "-o",
                str(tmp_path / "bad2"),
                "--label",
                str(tmp_path / "labels" / "case_a.nii.gz"),
                "--point",
                "1,1,1,0",
            ]
        )
        == 2
    )
    assert "--point goes with --key-box, or alone" in capsys.readouterr().err
    # a foreground point alone starts an object; background points alone cannot
    assert main([*base, "-o", str(tmp_path / "click"), "--point", "9,8,2,1", "--point", "12,8,3,0"]) == 0
    assert (tmp_path / "click" / "case_a_seg.nii.gz").exists()
    assert "the base model (no adapter) was never trained with clicks" in capsys.readouterr().err  # said, not refused
    assert main([*base, "-o", str(tmp_path / "bg"), "--point", "9,8,2,0"]) == 2
    assert "starts an object at a foreground point" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "ks"), "--point", "9,8,2,1", "--key-slice", "2"]) == 2
    assert "--key-slice goes with a thick --key-box" in capsys.readouterr().err


def test_options_take_values_that_start_with_a_minus_as_typed():
    """``--window -160,240`` as ``--help`` shows it (argparse alone takes only ``--window=-160,240``)."""
    from monai_cbo.cli import build_parser
    from monai_cbo.cli.options import join_negative_values

    typed = ["segment", "ct.nii.gz", "-o", "out", "--window", "-160,240", "--key-box", "-1,2,3,40,50,3"]
    args = build_parser().parse_args(join_negative_values([*typed, "--key-slice", "-0", "--overwrite"]))
    assert args.ct_window == [-160.0, 240.0] and args.key_box == [[-1, 2, 3, 40, 50, 3]]
    assert args.key_slice == 0 and args.overwrite is True
    assert join_negative_values(["--window=-1,2", "--auto", "-h"]) == ["--window=-1,2", "--auto", "-h"]
