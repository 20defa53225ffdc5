"""Tests for monai_cbo/metrics/table.py: per-case rows, summary, atomic CSV / JSON output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from monai_cbo.metrics import MetricsTable, case_metrics


def row(name: str, dice: float, hd: float, surface: float) -> dict:
    return {"class": name, "dice": dice, "hd95": hd, "nsd": surface, "gt_voxels": 10, "pred_voxels": 12}


def filled() -> MetricsTable:
    table = MetricsTable()
    table.add("case_1", [row("WT", 0.5, math.nan, 0.4), row("ET", 0.9, 1.0, 1.0)])
    table.add("case_2", [row("WT", 1.0, 2.0, 0.6)])
    table.add("case_3", [row("WT", 0.75, 4.0, 0.8)])
    return table


def test_summary_gives_mean_and_sample_std_and_counts_undefined_hd95() -> None:
    wt, et = filled().summary()
    assert (wt["class"], wt["n"], et["class"], et["n"]) == ("WT", 3, "ET", 1)
    assert wt["dice_mean"] == pytest.approx(0.75) and wt["dice_std"] == pytest.approx(0.25)
    assert (wt["hd95_mean"], wt["hd95_nan"]) == (3.0, 1) and wt["hd95_std"] == pytest.approx(math.sqrt(2))
    assert wt["nsd_mean"] == pytest.approx(0.6) and wt["nsd_std"] == pytest.approx(0.2)
    assert et["dice_mean"] == 0.9 and math.isnan(et["dice_std"])  # one case: no spread


def test_case_csv_round_trips(tmp_path: Path) -> None:
    gt = np.zeros((8, 8, 8), np.int64)
    gt[2:6, 2:6, 2:6] = 1
    table = filled()
    table.add("real", case_metrics(np.roll(gt, 1, 0), gt, {1: "WT"}, (0.7, 0.7, 2.5)))
    path = table.write_csv(tmp_path / "cases.csv")
    back = MetricsTable.read_csv(path)
    assert len(back.rows) == len(table.rows) == 5
    for a, b in zip(back.rows, table.rows, strict=True):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)  # equal, or both NaN


def test_writers_refuse_to_overwrite_and_leave_no_temporary_files(tmp_path: Path) -> None:
    table = filled()
    for name, write in (("cases.csv", table.write_csv), ("summary.csv", table.write_summary)):
        write(tmp_path / name)
        with pytest.raises(FileExistsError, match="overwrite"):
            write(tmp_path / name)
        write(tmp_path / name, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv", "summary.csv"]
    with open(tmp_path / "summary.csv", newline="") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["WT", "ET"]
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        table.write_summary(tmp_path / "summary.txt")


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path: Path) -> None:
    path = filled().write_summary(tmp_path / "summary.json")
    wt, et = json.loads(path.read_text(encoding="utf-8"))
    assert wt["hd95_nan"] == 1 and et["dice_std"] is None and et["hd95_mean"] == 1.0


def test_to_markdown_shows_mean_plus_minus_std_per_class() -> None:
    lines = filled().to_markdown().splitlines()
    assert lines[0] == "| class | n | Dice | HD95 (mm) | NSD |"
    assert lines[2] == "| WT | 3 | 0.750 ± 0.250 | 3.000 ± 1.414 (1 undefined) | 0.600 ± 0.200 |"
    assert lines[3] == "| ET | 1 | 0.900 | 1.000 | 1.000 |"  # one case: no std to show


def test_add_rejects_duplicate_cases_and_incomplete_rows() -> None:
    table = filled()
    with pytest.raises(ValueError, match="already has a row"):
        table.add("case_2", [row("WT", 1.0, 0.0, 1.0)])
    with pytest.raises(ValueError, match="lacks"):
        table.add("case_9", [{"class": "WT", "dice": 1.0}])
