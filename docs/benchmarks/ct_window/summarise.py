"""Tables of the CT-window sweep: mean 3D Dice per window, part (tune / held back) and tissue kind.

Reads ``runs/ct_window/<window>_<part>/rows.csv`` written by the commands in ``docs/benchmarks/ct_window.md``
and prints Markdown; with ``--json FILE`` also writes the figures.

    python docs/benchmarks/ct_window/summarise.py runs/ct_window --json docs/benchmarks/ct_window/summary.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_suite import KIND, WINDOWS  # noqa: E402

PROTOCOLS = ("per_slice", "one_key", "box3d", "three_keys")


def read(run_dir: Path) -> list[dict]:
    rows = []
    for window in WINDOWS:
        for part in ("tune", "validation"):
            path = run_dir / f"{window}_{part}" / "rows.csv"
            if path.is_file():
                with open(path, newline="", encoding="utf-8") as f:
                    rows += [{**r, "window": window} for r in csv.DictReader(f)]
    return rows


def table(rows: list[dict]) -> dict:
    """window -> part -> kind (and "all") -> protocol (and "mean") -> mean Dice."""
    out: dict = {}
    for window in WINDOWS:
        for part in ("tune", "validation"):
            mine = [r for r in rows if r["window"] == window and r["part"] == part]
            if not mine:
                continue
            for kind in (*sorted(set(KIND.values())), "all"):
                chosen = [r for r in mine if kind == "all" or KIND[r["target"]] == kind]
                cell = {p: statistics.mean(float(r["dice"]) for r in chosen if r["protocol"] == p) for p in PROTOCOLS}
                cell["mean"] = statistics.mean(cell.values())
                cell["targets"] = len({r["target"] for r in chosen})
                out.setdefault(window, {}).setdefault(part, {})[kind] = cell
    return out


def markdown(figures: dict) -> str:
    lines = []
    for part in ("tune", "validation"):
        lines += [
            f"### {'tune organs (choose)' if part == 'tune' else 'held-back organs (report only)'}",
            "",
            "| window (HU) | kind | targets | per-slice boxes | one key box | 3D box | three key boxes | mean |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for window, parts in figures.items():
            for kind, cell in parts.get(part, {}).items():
                lo, hi = WINDOWS[window]
                cells = " | ".join(f"{cell[p]:.3f}" for p in (*PROTOCOLS, "mean"))
                lines.append(f"| {lo}, {hi} | {kind} | {cell['targets']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = table(read(args.run_dir))
    print(markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
