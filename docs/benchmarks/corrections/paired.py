"""Pair interactive-protocol runs of ``monai-cbo prompts-bench --clicks N`` by case and target.

Each argument is ``LABEL=RUN`` (a prompts-bench output folder holding ``rows.csv``). The runs are restricted to the
(case, target) pairs they all scored, so that a zero-shot run over a whole set and an adapter scored on the cases it
was not trained on are compared on the same targets. For each start (a 3D box: ``clicks``; one click:
``fromclick``) one markdown row per run: Dice after each round, the gain of the last round over the start, the
area under the curve (mean over rounds), the targets ending below their start, and a round's time against the
first answer's (the mean over targets of round seconds / round-0 seconds)::

    python docs/benchmarks/corrections/paired.py zero=runs/clicks/spinal_zero adapter=runs/clicks/spinal_n1_s0

With ``--protocols`` it compares the prompt protocols instead (a box on every slice, one key box, ...): the mean
3D Dice of each run on the shared targets and, for every run after the first, its mean difference to the first
and on how many targets it is higher / lower::

    H=runs/fewshot/hippocampus
    python docs/benchmarks/corrections/paired.py --protocols cbo=$H/n4_s0_dec0.3_bf16_fastcpu/score \
        base=$H/n4_s0_adapter_fastcpu/score
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path


def _read(run: Path) -> dict[tuple[str, str, str], dict[str, dict]]:
    rows = run / "rows.csv"
    if not rows.exists():
        raise SystemExit(f"{rows} does not exist: give prompts-bench output folders (LABEL=FOLDER)")
    out: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    with open(rows, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[(row["set"], row["case"], row["target"])][row["protocol"]] = row
    return out


def _rounds(protocols: dict[str, dict], start: str) -> list[dict]:
    found = {int(m.group(1)): row for p, row in protocols.items() if (m := re.fullmatch(rf"{start}(\d+)", p))}
    return [found[k] for k in sorted(found)]


def table(runs: dict[str, dict], start: str) -> list[str]:
    common = set.intersection(*(set(r) for r in runs.values()))
    common = sorted(k for k in common if all(_rounds(r[k], start) for r in runs.values()))
    if not common:
        return []
    rounds = min(len(_rounds(r[k], start)) for r in runs.values() for k in common)
    head = " | ".join(f"{i}" for i in range(rounds))
    lines = [
        f"| run | targets | {head} | gain | AUC | below start after {rounds - 1} | round / first answer |",
        "|---|---:|" + "---:|" * rounds + "---:|---:|---:|---:|",
    ]
    for label, run in runs.items():
        curves = [[float(row["dice"]) for row in _rounds(run[k], start)[:rounds]] for k in common]
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(rounds)]
        below = sum(c[-1] < c[0] for c in curves)
        ratios = []
        for k in common:
            seq = _rounds(run[k], start)[:rounds]
            first = float(seq[0]["seconds"] or 0)
            if first > 0:
                ratios += [float(r["seconds"]) / first for r in seq[1:] if r["seconds"]]
        ratio = f"{sum(ratios) / len(ratios):.2f}" if ratios else "–"
        cells = " | ".join(f"{v:.3f}" for v in mean)
        auc = sum(mean) / len(mean)
        lines.append(
            f"| {label} | {len(curves)} | {cells} | {mean[-1] - mean[0]:+.3f} | {auc:.3f} | {below} of "
            f"{len(curves)} | {ratio} |"
        )
    return lines


def per_target(runs: dict[str, dict], start: str) -> list[str]:
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    lines = []
    for k in common:
        cells = []
        for label, run in runs.items():
            seq = _rounds(run[k], start)
            if seq:
                cells.append(f"{label} {float(seq[0]['dice']):.3f} -> {float(seq[-1]['dice']):.3f}")
        if cells:
            lines.append(f"- {k[1]} {k[2]}: " + ", ".join(cells))
    return lines


PROTOCOLS = ("per_slice", "one_key", "box3d", "three_keys", "automatic")


def protocol_table(runs: dict[str, dict]) -> list[str]:
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    shown = [p for p in PROTOCOLS if all(p in r[k] for r in runs.values() for k in common)]
    if not common or not shown:
        return []
    lines = [f"| run | targets | {' | '.join(shown)} |", "|---|---:|" + "---:|" * len(shown)]
    first = next(iter(runs.values()))
    for label, run in runs.items():
        cells = []
        for p in shown:
            mine = [float(run[k][p]["dice"]) for k in common]
            cell = f"{sum(mine) / len(mine):.3f}"
            if run is not first:
                ref = [float(first[k][p]["dice"]) for k in common]
                diff = [a - b for a, b in zip(mine, ref, strict=True)]
                up, down = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
                cell += f" ({sum(diff) / len(diff):+.3f}; {up} up, {down} down)"
            cells.append(cell)
        lines.append(f"| {label} | {len(common)} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN")
    p.add_argument("--protocols", action="store_true", help="compare the prompt protocols, not the click rounds")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label:
            p.error(f"{item!r}: give LABEL=FOLDER")
        runs[label] = _read(Path(folder))
    if args.protocols:
        print("\n".join(protocol_table(runs)))
        return 0
    for start, name in (("clicks", "a 3D box"), ("fromclick", "one foreground click")):
        lines = table(runs, start)
        if lines:
            print(f"\nStarted by {name}:\n")
            print("\n".join(lines))
            print("\nPer target, start -> last round:\n")
            print("\n".join(per_target(runs, start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
