"""``monai-cbo speed``: training step and encoder times, interleaved so ratios are fair."""

from __future__ import annotations

import argparse
import json

from ..peft.config import PRESETS
from ..utils import check_option
from .options import list_of


def add_parser(sub) -> None:
    from ..networks.builders import MODELS
    from ..networks.runtime import RUNTIMES
    from ..precision import PRECISIONS
    from ..timing.speed import DEFAULT_SPEED_PRESETS

    p = sub.add_parser(
        "speed",
        help="time training steps per preset (interleaved) and the encoder per slice",
        description="Training step time per preset, timed interleaved so ratios are fair; "
        "CBO overhead ratios; encoder seconds per slice; peak memory (CUDA "
        "allocator peak, or the process's peak resident set on the CPU).",
    )
    p.add_argument("--model", default="litemedsam", choices=list(MODELS))
    p.add_argument(
        "--presets",
        type=list_of(str, what="--presets"),
        default=list(DEFAULT_SPEED_PRESETS),
        help=f"comma-separated presets (default {','.join(DEFAULT_SPEED_PRESETS)})",
    )
    p.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    p.add_argument("--prompts", type=int, default=2, help="box prompts per image (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per preset after one warm-up (default 5)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="autocast (mixed precision)")
    p.add_argument("--skip-encoder", action="store_true", help="do not time the encoder alone")
    p.add_argument(
        "--volume",
        nargs=2,
        action="append",
        metavar=("IMAGE", "LABEL"),
        help="also time segmenting this volume end to end against its encoder-only time (repeatable)",
    )
    p.add_argument(
        "--classes",
        type=list_of(int, what="--classes"),
        default=None,
        help="with --volume: label values to prompt (default all present); with --case: the values that make the "
        "target object (default the label's one value)",
    )
    p.add_argument(
        "--speedups",
        action="store_true",
        help="instead: before/after ratios of the CPU speed-ups (feature caches, inference_mode, "
        "channels-last, torch.compile), each with the largest output difference",
    )
    p.add_argument("--no-compile", action="store_true", help="with --speedups: skip torch.compile (slow to compile)")
    p.add_argument(
        "--precision-check",
        action="store_true",
        help="instead: fp32 against bf16 (--precision bf16), interleaved: encoder, decoder and a training step, each "
        "with its output difference, and whether this CPU has native bf16 (monai_cbo.timing.precision_check)",
    )
    p.add_argument(
        "--case",
        nargs=2,
        metavar=("IMAGE", "LABEL"),
        help="instead: time one monai-cbo segment process per --protocol on this volume, prompted from the label's "
        "--classes (default its one value), end to end: start-up, each stage, slices encoded against slices in the "
        "volume (monai_cbo.timing.case_timing)",
    )
    p.add_argument(
        "--protocol",
        type=list_of(str, what="--protocol"),
        action="extend",
        help="with --case: per_slice, one_key, box3d, three_keys (comma-separated or repeated; default box3d,one_key)",
    )
    p.add_argument("--case-output", metavar="DIR", help="with --case: keep the prompt files, masks and timings here")
    p.add_argument(
        "--case-precision",
        choices=PRECISIONS,
        default=None,
        help="with --case: each segment run's --precision (default segment's own, auto); the reference encoder "
        "time stays fp32, as the issue's target is stated",
    )
    p.add_argument(
        "--case-runtime",
        choices=RUNTIMES,
        default=None,
        help="with --case: each segment run's --encoder-runtime (default segment's own, auto); with openvino, run "
        "once before timing so that the runs read the converted model instead of converting it",
    )
    p.add_argument(
        "--case-bundle",
        metavar="BUNDLE",
        default=None,
        help="with --case: each segment run's --bundle (a shipped bundle's name or a folder), for an adapter's "
        "own decoder calls and stop",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..timing.speed import (
        encoder_time_per_slice,
        machine_summary,
        peak_memory_mib,
        training_step_times,
        volume_time,
    )

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.case:
        from ..timing.case_timing import case_timings

        result = case_timings(
            *args.case,
            protocols=args.protocol or ["box3d", "one_key"],
            classes=args.classes,
            model=args.model,
            device=args.device,
            encoder_reference=None
            if args.skip_encoder
            else lambda: encoder_time_per_slice(args.model, args.steps, device, args.amp),
            keep=args.case_output,
            segment_options=[
                *(["--precision", args.case_precision] if args.case_precision else []),
                *(["--bundle", args.case_bundle] if args.case_bundle else []),
                *(["--encoder-runtime", args.case_runtime] if args.case_runtime else []),
            ],
        )
        print(json.dumps(result, indent=2))
        return 0
    if args.precision_check:
        from ..timing.precision_check import precision_check

        print(json.dumps({"model": args.model, **precision_check(args.model, args.steps, args.batch)}, indent=2))
        return 0
    if args.speedups:
        from ..timing.speedups import measure_speedups

        figures = measure_speedups(args.model, args.steps, args.batch, compile_encoder=not args.no_compile)
        print(json.dumps({"model": args.model, "machine": machine_summary("cpu"), "speedups": figures}, indent=2))
        return 0
    presets = [check_option("preset", p, PRESETS) for p in args.presets]
    result: dict = {
        "model": args.model,
        "machine": machine_summary(device),
        "batch": args.batch,
        "prompts_per_image": args.prompts,
        "steps": args.steps,
        "amp": args.amp,
    }
    if not args.skip_encoder:
        result["encoder_per_slice"] = encoder_time_per_slice(args.model, args.steps, device, args.amp)
    for image, label in args.volume or []:
        result.setdefault("volumes", {})[image] = volume_time(image, label, args.classes, args.model, device)
    if not presets:
        print(json.dumps(result, indent=2))
        return 0
    steps = training_step_times(args.model, presets, args.batch, args.prompts, args.steps, device=device, amp=args.amp)
    result["train_step"] = {
        p: {
            "median_s": round(v["median_s"], 4),
            "times_s": [round(t, 4) for t in v["times_s"]],
            "precision": v["precision"],
        }
        for p, v in steps.items()
    }
    result["cbo_overhead"] = {
        f"{base}_cbo/{base}": round(steps[f"{base}_cbo"]["median_s"] / steps[base]["median_s"], 4)
        for base in ("lora", "adapter")
        if base in steps and f"{base}_cbo" in steps
    }
    result["peak_memory_mib"] = round(peak_memory_mib(device), 1)
    print(json.dumps(result, indent=2))
    return 0
