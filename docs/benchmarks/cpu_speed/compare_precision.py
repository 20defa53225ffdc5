"""Dice per kind of volume, fp32 against bf16: two ``monai-cbo prompts-bench`` runs of the same suite.

    python docs/benchmarks/cpu_speed/compare_precision.py runs/precision/fp32 runs/precision/bf16 [--tolerance 0.005]

Prints, per set of the suite's validation part (a set is one kind of volume) and protocol, the mean 3D Dice of
each run and their difference; exits 1 where any set's mean over its protocols differs by more than the
tolerance (issue 31's rule for making bf16 the default on the CPU).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _dice(run: Path) -> dict[tuple[str, str], list[float]]:
    rows = list(csv.DictReader(open(run / "rows.csv", newline="", encoding="utf-8")))
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["part"] == "validation":
            out[r["set"], r["protocol"]].append(float(r["dice"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("bf16", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args()
    a, b = _dice(args.fp32), _dice(args.bf16)
    if set(a) != set(b):
        print(f"the runs scored different sets or protocols: {sorted(set(a) ^ set(b))}", file=sys.stderr)
        return 2
    print("| set | protocol | fp32 | bf16 | bf16 - fp32 |\n|---|---|---:|---:|---:|")
    per_set: dict[str, list[float]] = defaultdict(list)
    for key in sorted(a):
        da, db = statistics.mean(a[key]), statistics.mean(b[key])
        per_set[key[0]].append(db - da)
        print(f"| {key[0]} | {key[1]} | {da:.4f} | {db:.4f} | {db - da:+.4f} |")
    mean = {s: statistics.mean(d) for s, d in per_set.items()}
    within = {s: abs(d) <= args.tolerance + 1e-12 for s, d in mean.items()}
    print()
    for s, d in sorted(mean.items()):
        print(f"{s}: mean difference {d:+.4f} ({'within' if within[s] else 'OUTSIDE'} {args.tolerance})")
    return 0 if all(within.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
