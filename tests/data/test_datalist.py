from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_cbo.data import load_datalist


def _write(folder: Path, payload: dict) -> Path:
    path = folder / "datalist.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_paths_resolve_against_dataset_dir_and_other_fields_pass_through(tmp_path):
    (tmp_path / "case_1").mkdir()  # a folder named like the case: MONAI's loader would turn "case" into a path
    for name in ("case_1/flair.nii.gz", "case_1/t1c.nii.gz", "case_1/seg.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    entry = {"case": "case_1", "image": ["case_1/flair.nii.gz", "case_1/t1c.nii.gz"], "label": "case_1/seg.nii.gz"}
    path = _write(tmp_path, {"dataset_dir": str(tmp_path), "training": [entry]})
    [item] = load_datalist(path, "training")
    assert item["case"] == "case_1"
    assert item["image"] == [str(tmp_path / "case_1/flair.nii.gz"), str(tmp_path / "case_1/t1c.nii.gz")]
    assert item["label"] == str(tmp_path / "case_1/seg.nii.gz")


@pytest.mark.parametrize(
    "payload,key,error,message",
    [
        ({"training": []}, "training", ValueError, "the 'training' list is empty"),
        ({"training": [{"image": "a.nii.gz"}]}, "test", ValueError, r"has no 'test' list \(its lists: \['training'\]"),
        (
            {"training": [{"image": "missing.nii.gz"}]},
            "training",
            FileNotFoundError,
            "training entry 0: image .*missing.nii.gz does not exist; check dataset_dir",
        ),
        ({"training": ["a.nii.gz"]}, "training", ValueError, "expected an object with an 'image'"),
    ],
)
def test_bad_datalists_are_refused_before_training_starts(tmp_path, payload, key, error, message):
    with pytest.raises(error, match=message):
        load_datalist(_write(tmp_path, payload), key)


def test_missing_or_broken_datalist_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist; write one with a data_prep/ script"):
        load_datalist(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_datalist(tmp_path / "bad.json")
