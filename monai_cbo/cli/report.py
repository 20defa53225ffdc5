"""``monai-cbo report``: the paper-style report of a bench folder."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md and report.html from a bench folder",
        description="Paper-style table (trainable parameters PEFT / CBO / decoder; Dice, HD95, NSD "
        "mean ± std over seeds and cases), per-case tables, box plots, overlays of the "
        "best and worst cases, and the paper's pooled 2D Dice, labelled as such.",
    )
    p.add_argument("run_dir", help="folder written by monai-cbo bench")
    p.add_argument("--overlays", type=int, default=2, help="best and worst cases to show per class (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.report import write_report

    for path in write_report(args.run_dir, overlays=args.overlays, overwrite=args.overwrite):
        print(path)
    return 0
