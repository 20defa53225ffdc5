"""Tests of data_prep/make_demo_data.py: synthetic cases plus a seeded datalist."""

from __future__ import annotations

import json

import pytest

from data_prep import make_demo_data


def test_writes_n_cases_and_a_datalist(tmp_path):
    out = tmp_path / "demo" / "datalist.json"
    argv = [str(tmp_path / "demo"), "-o", str(out), "-n", "3", "--seed", "1", "--test-fraction", "0"]
    assert make_demo_data.main(argv) == 0
    datalist = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(p.name for p in (tmp_path / "demo" / "imagesTr").iterdir()) == [
        f"demo_{i:03d}.nii.gz" for i in range(3)
    ]
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 0]
    assert datalist["labels"] == {"0": "background", "1": "spleen"} and datalist["channels"] == ["CT"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_demo_data.main(argv)
    assert make_demo_data.main([*argv, "--overwrite"]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == datalist
