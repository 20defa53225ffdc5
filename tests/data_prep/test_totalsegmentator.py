"""Tests of data_prep/totalsegmentator.py: the shared examples (label maps) and a synthetic official layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_prep import totalsegmentator
from data_prep.common import LayoutError

PAIR = ["--image-pattern", "example_ct_sm.nii.gz", "--label-pattern", "example_seg.nii.gz"]


def _run(dataset, out, *extra: str) -> dict:
    argv = [str(dataset), "-o", str(out), "--val-fraction", "0", "--test-fraction", "0", *extra]
    assert totalsegmentator.main(argv) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_examples_spleen_maps_to_id_1(totalseg_examples, tmp_path):
    datalist = _run(totalseg_examples, tmp_path / "d.json", *PAIR, "--classes", "spleen")
    assert datalist["labels"] == {"0": "background", "1": "spleen"} and datalist["label_format"] == "label_map"
    assert datalist["training"] == [{"image": "example_ct_sm.nii.gz", "label": "example_seg.nii.gz"}]
    label = np.asanyarray(nib.load(totalseg_examples / "example_seg.nii.gz").dataobj)
    assert (label == 1).any()  # the spleen is really id 1 in the label map
    two = _run(totalseg_examples, tmp_path / "e.json", *PAIR, "--classes", "kidney_left,spleen")
    assert two["labels"] == {"0": "background", "1": "spleen", "3": "kidney_left"}
    assert len(_run(totalseg_examples, tmp_path / "f.json", *PAIR)["labels"]) == 118  # all 117 classes


def test_unknown_class_suggests_close_matches(totalseg_examples, tmp_path):
    with pytest.raises(ValueError, match="unknown class 'kidney_lft'; did you mean kidney_left"):
        _run(totalseg_examples, tmp_path / "d.json", *PAIR, "--classes", "spleen,kidney_lft")
    with pytest.raises(ValueError, match="no task 'total_ct'; pass --task with one of total, total_mr"):
        _run(totalseg_examples, tmp_path / "d.json", *PAIR, "--task", "total_ct")


def test_star_patterns_pair_images_with_label_maps(tmp_path, write_nifti):
    for case in ("a", "b"):
        write_nifti(tmp_path / "imagesTr" / f"{case}_ct.nii.gz")
        write_nifti(tmp_path / "labelsTr" / f"{case}_seg.nii.gz")
    (tmp_path / "map.json").write_text(json.dumps({"1": "liver", "2": "spleen"}), encoding="utf-8")
    argv = ["--image-pattern", "imagesTr/*_ct.nii.gz", "--label-pattern", "labelsTr/*_seg.nii.gz"]
    datalist = _run(tmp_path, tmp_path / "d.json", *argv, "--class-map", str(tmp_path / "map.json"))
    assert datalist["training"][1] == {"image": "imagesTr/b_ct.nii.gz", "label": "labelsTr/b_seg.nii.gz"}
    assert datalist["labels"] == {"0": "background", "1": "liver", "2": "spleen"}


def test_official_layout_lists_one_mask_per_selected_class(tmp_path):
    for subject in ("s0001", "s0002"):
        (tmp_path / subject / "segmentations").mkdir(parents=True)
        for name in ("ct", "segmentations/liver", "segmentations/spleen", "segmentations/aorta"):
            (tmp_path / subject / f"{name}.nii.gz").touch()
    datalist = _run(tmp_path, tmp_path / "d.json", "--classes", "spleen,liver")
    assert datalist["label_format"] == "masks" and datalist["labels"] == {
        "0": "background",
        "1": "spleen",
        "2": "liver",
    }
    assert datalist["training"][0] == {
        "image": "s0001/ct.nii.gz",
        "label": ["s0001/segmentations/spleen.nii.gz", "s0001/segmentations/liver.nii.gz"],
    }
    (tmp_path / "s0002" / "segmentations" / "liver.nii.gz").unlink()
    with pytest.raises(LayoutError, match="case s0002 is missing s0002/segmentations/liver.nii.gz"):
        _run(tmp_path, tmp_path / "e.json", "--classes", "spleen,liver")


def test_folder_without_cases_lists_expected_and_found(tmp_path):
    (tmp_path / "notes.txt").touch()
    with pytest.raises(LayoutError, match=r"(?s)expected: sXXXX/ct.nii.gz.*found in .*notes.txt"):
        _run(tmp_path, tmp_path / "d.json")
