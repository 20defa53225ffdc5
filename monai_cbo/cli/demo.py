"""``monai-cbo demo``: the embedded synthetic demo, or the real-data hippocampus demo."""

from __future__ import annotations

import argparse

from ..peft.config import PRESETS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded demo (synthetic CT, train, evaluate), or with --data the real-data hippocampus demo",
        description="Without --data: generates a small synthetic CT data set, trains the spleen bundle "
        "(LiteMedSAM + lora_cbo) for a short schedule, evaluates it and writes NIfTI masks and a Dice table; "
        "needs no data and no internet, about 5 minutes on 2 CPU cores. With --data DIR (an MSD "
        "Task04_Hippocampus folder): segments cases the shipped hippocampus adapter never saw with no prompt, "
        "beside zero-shot LiteMedSAM with label boxes, writes masks and PNG overlays, then fine-tunes a short "
        "lora_cbo run on two of them and scores it on the others; minutes on 2 CPU cores. The output "
        "folder is the demo's own: a second run replaces it.",
    )
    p.add_argument("--data", default=None, help="an MSD Task04_Hippocampus folder: run the real-data demo on it")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo_hippocampus)")
    p.add_argument("--cases", type=int, default=6, help="synthetic cases: 1 validation, 1 test, the rest train (6)")
    p.add_argument(
        "--samples", type=int, default=5, help="with --data: held-out cases (2 fine-tune, 1 validate, rest score; 5)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; with --data 10)")
    p.add_argument("--preset", default="lora_cbo", choices=list(PRESETS), help="PEFT preset (default lora_cbo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import hippocampus_demo, synthetic_demo

    if args.data is None:
        return synthetic_demo(args.out or "runs/demo", args.cases, args.epochs or 4, args.preset, args.seed)
    return hippocampus_demo(
        args.data, args.out or "runs/demo_hippocampus", args.samples, args.epochs or 10, args.preset, args.seed
    )
