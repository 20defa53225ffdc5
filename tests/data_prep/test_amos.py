"""Tests of data_prep/amos.py on a tiny synthetic AMOS folder (CT cases below 500, MRI from 500)."""

from __future__ import annotations

import json

from data_prep import amos

NO_SPLIT = ["--val-fraction", "0", "--test-fraction", "0"]


def _amos(root, write_nifti, meta: dict | None = None):
    for case in ("amos_0001", "amos_0004", "amos_0507"):
        write_nifti(root / "imagesTr" / f"{case}.nii.gz")
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", value=1)
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def _run(data, out, *extra: str) -> dict:
    assert amos.main([str(data), "-o", str(out), *NO_SPLIT, *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_amos_uses_dataset_json_labels_and_keeps_ct(tmp_path, write_nifti):
    labels = {"0": "background", **{str(i): f"organ {i}" for i in range(1, 16)}}
    data = _amos(tmp_path / "amos22", write_nifti, {"name": "AMOS", "labels": labels})
    datalist = _run(data, tmp_path / "d.json")
    assert datalist["labels"] == labels and datalist["channels"] == ["CT"] and datalist["label_convention"] == "amos"
    assert [c["image"] for c in datalist["training"]] == ["imagesTr/amos_0001.nii.gz", "imagesTr/amos_0004.nii.gz"]
    mri = _run(data, tmp_path / "m.json", "--modality", "MRI", "--classes", "organ 2")
    assert mri["training"] == [
        {"case": "amos_0507", "image": "imagesTr/amos_0507.nii.gz", "label": "labelsTr/amos_0507.nii.gz"}
    ]
    assert mri["channels"] == ["MRI"] and mri["labels"] == {"0": "background", "2": "organ 2"}


def test_amos_without_dataset_json_uses_the_15_standard_names(tmp_path, write_nifti):
    datalist = _run(_amos(tmp_path, write_nifti), tmp_path / "d.json")
    assert len(datalist["labels"]) == 16 and datalist["labels"]["15"] == "prostate_uterus"
