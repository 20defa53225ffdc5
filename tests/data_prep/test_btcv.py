"""Tests of data_prep/btcv.py on a tiny synthetic BTCV folder."""

from __future__ import annotations

import json

import pytest

from data_prep import btcv
from data_prep.common import LayoutError


def _btcv(root, write_nifti, n: int = 5):
    for i in range(1, n + 1):
        write_nifti(root / "imagesTr" / f"img{i:04d}.nii.gz")
        write_nifti(root / "labelsTr" / f"label{i:04d}.nii.gz", value=i % 14)
    return root


def test_btcv_pairs_images_with_labels_and_names_13_organs(tmp_path, write_nifti):
    data = _btcv(tmp_path / "BTCV", write_nifti)
    assert btcv.main([str(data), "-o", str(tmp_path / "d.json"), "--seed", "1"]) == 0
    datalist = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert len(datalist["labels"]) == 14 and datalist["labels"]["1"] == "spleen"
    assert datalist["labels"]["13"] == "adrenal_gland_left" and datalist["channels"] == ["CT"]
    cases = [c for k in ("training", "validation", "test") for c in datalist[k]]
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    assert {"case": "img0003", "image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"} in cases


def test_btcv_classes_keep_their_ids(tmp_path, write_nifti):
    data = _btcv(tmp_path, write_nifti, n=2)
    assert (
        btcv.main(
            [
                str(data),
                "-o",
                str(tmp_path / "d.json"),
                "--classes",
                "liver,spleen",
                "--val-fraction",
                "0",
                "--test-fraction",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))["labels"] == {
        "0": "background",
        "1": "spleen",
        "6": "liver",
    }


def test_btcv_missing_label_is_named(tmp_path, write_nifti):
    data = _btcv(tmp_path, write_nifti, n=2)
    (data / "labelsTr" / "label0002.nii.gz").unlink()
    with pytest.raises(
        LayoutError,
        match=r"(?s)img0002.nii.gz has no label labelsTr/label0002.nii.gz.*"
        r"expected: imagesTr/img<XXXX>.nii.gz; labelsTr/label<XXXX>.nii.gz",
    ):
        btcv.main([str(data), "-o", str(tmp_path / "d.json")])
