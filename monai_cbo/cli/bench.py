"""``monai-cbo bench``: the ablation of PEFT presets x seeds on one dataset (resumable)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..peft.config import ABLATION_PRESETS
from .options import absolute, add_precision_option, add_preprocess_options, list_of, preprocess_of


def add_parser(sub) -> None:
    from ..networks.builders import MODELS

    p = sub.add_parser(
        "bench",
        help="ablation: train and score PEFT presets x seeds on one dataset (resumable)",
        description="Trains every preset for the same budget (steps x slices, cosine LR) with each "
        "seed, segments the evaluation split with box prompts from its labels and keeps "
        "per run: adapter, per-case metrics, masks, result.json. Re-running the same "
        "command resumes: finished (preset, seed) runs are not redone.",
    )
    p.add_argument("datalist", type=absolute, help="datalist JSON written by a data_prep/ script (fixed split)")
    p.add_argument("-o", "--out", required=True, help="bench folder (created; resumed if it exists)")
    p.add_argument(
        "--dataset-dir", type=absolute, default=None, help="base folder of the datalist's paths (default: its own)"
    )
    p.add_argument(
        "--presets",
        type=list_of(str, what="--presets"),
        default=None,
        help=f"comma-separated presets (default {','.join(ABLATION_PRESETS)}, or --init-adapter's preset; add "
        "'full' for full fine-tuning)",
    )
    p.add_argument(
        "--seeds", type=list_of(int, what="--seeds"), default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)"
    )
    p.add_argument("--model", default="litemedsam", choices=list(MODELS))
    p.add_argument("--checkpoint", default=None, help="base model weights (SAM ViT .pth)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank / adapter width (default 4 / 16)")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run (default 60)")
    p.add_argument("--batch-size", type=int, default=2, help="2D slices per step (default 2)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate, cosine to 0 (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--box-jitter", type=int, default=5, help="training box jitter in model pixels (default 5)")
    p.add_argument(
        "--walk-boxes",
        type=float,
        default=0.0,
        help="share of box steps prompted with the neighbouring slice's box grown as a walk grows it (default 0)",
    )
    p.add_argument(
        "--walk-prompt",
        action="store_true",
        help="with --walk-boxes: a learned walk prompt tells the model which boxes are a walk's",
    )
    p.add_argument(
        "--min-foreground",
        type=int,
        default=4,
        help="pixels a class needs on a slice to be sampled and prompted (default 4)",
    )
    p.add_argument(
        "--classes",
        type=list_of(int, what="--classes"),
        default=None,
        help="label values to prompt, e.g. 1,2 (default: all present)",
    )
    p.add_argument("--train-split", default="training", help="datalist list to train on (default training)")
    p.add_argument("--eval-split", default="test", help="datalist list to score (default test)")
    p.add_argument("--max-train-cases", type=int, default=None, help="use the first N training cases only")
    p.add_argument("--max-eval-cases", type=int, default=None, help="score the first N evaluation cases only")
    add_preprocess_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_precision_option(p, training=True)
    p.add_argument(
        "--cache-mib",
        type=float,
        default=6144.0,
        help="memory for features of frozen encoder stages, reused across presets (0: off)",
    )
    p.add_argument(
        "--auto-share",
        type=float,
        default=0.0,
        help="share of automatic training steps (learned class prompts, no box); > 0 also scores every run "
        "automatically (columns auto, auto_refine, auto_lcc). Default 0: box prompts only",
    )
    p.add_argument(
        "--background-ratio",
        type=float,
        default=0.1,
        help="in automatic steps, the share of slices drawn from slices without any class (default 0.1)",
    )
    p.add_argument(
        "--decoder-steps",
        type=int,
        default=0,
        help="after the steps, this many more with the whole image encoder frozen (its PEFT weights as trained): "
        "the mask decoder and class prompts train on, each slice encoded once (kept within --cache-mib), so a "
        "step costs the decoder only. Default 0: none",
    )
    p.add_argument(
        "--decoder-lr",
        type=float,
        default=None,
        help="peak LR of the decoder steps, cosine to 0 (default a third of --learning-rate)",
    )
    p.add_argument(
        "--auto-z-smooth",
        type=float,
        default=0.0,
        metavar="W",
        help="also score the automatic mode with cross-slice smoothing W and the largest component (column "
        "auto_lcc_smooth; the hippocampus bundle's steps at 0.5). Default 0: not scored",
    )
    p.add_argument(
        "--init-adapter",
        default=None,
        metavar="ADAPTER",
        help="start every run from this trained adapter (for example a bundle's models/adapter.pt) instead of the "
        "preset's initial weights: bench its one preset; --steps 0 runs only the decoder stage, or scores the "
        "adapter as it is",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_bench
    from ..bench.runner import BenchFailed

    # every BenchConfig field is an option whose dest is the field's name (the parser above)
    # (but amp, which --precision fp32 / --no-amp turns off)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig) if f.name != "amp"}
    values["amp"] = args.precision != "fp32"
    if args.init_adapter:  # its preset and rank unless given: the file says how it was built
        from ..peft import read_adapter

        saved = read_adapter(args.init_adapter)["peft_config"]
        values["presets"] = args.presets or [saved["preset"]]
        if args.rank is None and values["presets"] == [saved["preset"]]:
            values["rank"] = saved["rank"]
    values["presets"] = values["presets"] or list(ABLATION_PRESETS)
    pre = preprocess_of(args)  # the options' preprocessing, with the library's defaults
    values.update(modality=pre.modality, ct_window=list(pre.ct_window), channels=pre.channels, view=pre.view)
    try:
        run_bench(
            BenchConfig(**values),
            command=shlex.join(["monai-cbo", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None,
        )
    except BenchFailed as err:
        print(f"monai-cbo bench: {err}", file=sys.stderr)
        return 1
    print(f"results in {args.out}; write the report with: monai-cbo report {args.out}")
    return 0
