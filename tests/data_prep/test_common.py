"""Tests of data_prep/common.py: the seeded split, atomic datalist writing, layout errors, script entry."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.common import LayoutError, keep_classes, parse_label_names, split_cases, write_datalist

REPO = Path(__file__).resolve().parents[2]


def test_split_is_seeded_disjoint_and_sized_by_fractions():
    cases = [{"image": f"imagesTr/case_{i:03d}.nii.gz"} for i in range(50)]
    split = split_cases(cases, 0.2, 0.1, seed=3)
    shuffled = random.Random(9).sample(cases, len(cases))
    assert split_cases(shuffled, 0.2, 0.1, seed=3) == split  # input order does not matter
    assert split_cases(cases, 0.2, 0.1, seed=4) != split
    assert [len(split[k]) for k in ("training", "validation", "test")] == [35, 10, 5]
    names = [c["image"] for part in split.values() for c in part]
    assert sorted(names) == sorted(c["image"] for c in cases)  # every case exactly once


@pytest.mark.parametrize(("val", "test", "n"), [(0.6, 0.5, 10), (-0.1, 0.0, 10), (1.0, 0.0, 10), (0.5, 0.4, 1)])
def test_split_rejects_bad_fractions_and_empty_training(val, test, n):
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases([{"image": str(i)} for i in range(n)], val, test, seed=0)


def test_write_datalist_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = write_datalist(tmp_path / "datalist.json", {"training": [1]})
    with pytest.raises(FileExistsError, match=r"datalist\.json.*--overwrite"):
        write_datalist(path, {"training": [2]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"training": [1]}
    write_datalist(path, {"training": [2]}, overwrite=True)
    assert json.loads(path.read_text(encoding="utf-8")) == {"training": [2]}
    assert [p.name for p in tmp_path.iterdir()] == ["datalist.json"]  # no temporary file left behind


def test_layout_error_lists_expected_and_found(tmp_path):
    for i in range(12):
        (tmp_path / f"file_{i:02d}.txt").touch()
    (tmp_path / "sub").mkdir()
    error = LayoutError("no images", ["imagesTr/<case>.nii.gz"], [tmp_path, tmp_path / "absent"])
    assert isinstance(error, ValueError)
    message = str(error)
    assert "expected: imagesTr/<case>.nii.gz" in message and "file_00.txt" in message and "... 5 more" in message
    assert "(no such folder)" in message and "sub/" not in message  # sorted: "sub/" is past the first eight


def test_label_names_and_class_selection():
    assert parse_label_names("0:background, 1:anterior,2:posterior") == {
        "0": "background",
        "1": "anterior",
        "2": "posterior",
    }
    with pytest.raises(ValueError, match="id:name"):
        parse_label_names("background,1:liver")
    labels = {"0": "background", "1": "spleen", "3": "kidney_left"}
    assert keep_classes(labels, ["kidney_left"]) == {"0": "background", "3": "kidney_left"}
    with pytest.raises(ValueError, match="did you mean kidney_left"):
        keep_classes(labels, ["kidney_lft"])


@pytest.mark.parametrize("script", ["msd", "brats", "totalsegmentator", "btcv", "amos", "make_demo_data"])
def test_scripts_run_directly_with_help(script, tmp_path):
    command = [sys.executable, REPO / "data_prep" / f"{script}.py", "--help"]
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    assert result.returncode == 0 and "--val-fraction" in result.stdout and "--overwrite" in result.stdout


def test_script_reports_data_errors_in_one_message(tmp_path):
    command = [sys.executable, REPO / "data_prep" / "msd.py", tmp_path / "absent", "-o", tmp_path / "d.json"]
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    assert (
        result.returncode == 1
        and result.stderr.startswith("error: dataset folder")
        and "Traceback" not in result.stderr
    )
