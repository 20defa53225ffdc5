"""Per-case metric rows and their per-class summary, written atomically as CSV / JSON / Markdown."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from monai_cbo.utils import write_atomic

__all__ = ["MetricsTable"]

CASE_FIELDS = ("case", "class", "dice", "hd95", "nsd", "gt_voxels", "pred_voxels")
SUMMARY_FIELDS = ("class", "n", "dice_mean", "dice_std", "hd95_mean", "hd95_std", "hd95_nan", "nsd_mean", "nsd_std")
_TYPES = {"case": str, "class": str, "dice": float, "hd95": float, "nsd": float, "gt_voxels": int, "pred_voxels": int}


def _mean_std(key: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"{key}_mean": float(values.mean()) if values.size else math.nan,
        f"{key}_std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
    }


def _write_csv(path: Path, fields: tuple[str, ...], rows: Iterable[Mapping]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class MetricsTable:
    """Rows ``(case, class, dice, hd95, nsd, gt_voxels, pred_voxels)``, one per case and class.

    The summary gives per class, over cases: ``n``, mean and sample standard deviation (ddof=1; NaN when
    n < 2) of Dice and NSD, and of HD95 over the cases where it is defined, with ``hd95_nan`` counting
    the cases where it is not (exactly one of prediction and ground truth empty).
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, str | float | int]] = []
        self._keys: set[tuple[str, str]] = set()

    def add(self, case_id: str, rows: Iterable[Mapping[str, object]]) -> None:
        """Add the rows of one case, e.g. ``table.add("case_001", case_metrics(pred, gt, classes, spacing))``."""
        new, keys = [], set()
        for row in rows:
            missing = [k for k in CASE_FIELDS[1:] if k not in row]
            if missing:
                raise ValueError(f"row {dict(row)!r} of case {case_id!r} lacks {missing}; use case_metrics rows")
            key = (str(case_id), str(row["class"]))
            if key in self._keys or key in keys:
                raise ValueError(f"case {key[0]!r} already has a row for class {key[1]!r}; case ids must be unique")
            keys.add(key)
            new.append({k: _TYPES[k](case_id if k == "case" else row[k]) for k in CASE_FIELDS})
        self._keys |= keys
        self.rows.extend(new)

    @classmethod
    def read_csv(cls, path: str | Path) -> MetricsTable:
        """Load a per-case CSV written by :meth:`write_csv`."""
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != CASE_FIELDS:
                raise ValueError(f"{path} has columns {reader.fieldnames}, expected {list(CASE_FIELDS)}")
            records = list(reader)
        table = cls()
        for record in records:
            table.add(record["case"], [record])
        return table

    def summary(self) -> list[dict[str, str | float | int]]:
        """One dict per class (first-seen order) with the fields of ``SUMMARY_FIELDS``."""
        out = []
        for name in dict.fromkeys(r["class"] for r in self.rows):
            rows = [r for r in self.rows if r["class"] == name]
            dice, hd, surface = (np.array([r[k] for r in rows], dtype=float) for k in ("dice", "hd95", "nsd"))
            out.append(
                {
                    "class": name,
                    "n": len(rows),
                    **_mean_std("dice", dice),
                    **_mean_std("hd95", hd[~np.isnan(hd)]),
                    "hd95_nan": int(np.isnan(hd).sum()),
                    **_mean_std("nsd", surface),
                }
            )
        return out

    def write_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the per-case rows; refuses to replace an existing file unless ``overwrite``."""
        return write_atomic(path, lambda tmp: _write_csv(tmp, CASE_FIELDS, self.rows), overwrite)

    def write_summary(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`summary` as ``.csv`` or ``.json`` (NaN as ``null``), chosen by the file suffix."""
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return write_atomic(path, lambda tmp: _write_csv(tmp, SUMMARY_FIELDS, self.summary()), overwrite)
        if suffix == ".json":
            rows = [{k: None if v != v else v for k, v in r.items()} for r in self.summary()]  # NaN -> null
            text = json.dumps(rows, indent=2, allow_nan=False) + "\n"
            return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)
        raise ValueError(f"summary path {path} must end in .csv or .json")

    def to_markdown(self, digits: int = 3) -> str:
        """The summary as a Markdown table: class | n | Dice | HD95 (mm) | NSD, each mean ± std (the mean alone
        where the std is undefined, i.e. a single case)."""

        def cell(row: Mapping, key: str) -> str:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

        lines = ["| class | n | Dice | HD95 (mm) | NSD |", "|---|---:|---|---|---|"]
        for r in self.summary():
            hd = cell(r, "hd95") + (f" ({r['hd95_nan']} undefined)" if r["hd95_nan"] else "")
            lines.append(f"| {r['class']} | {r['n']} | {cell(r, 'dice')} | {hd} | {cell(r, 'nsd')} |")
        return "\n".join(lines) + "\n"
