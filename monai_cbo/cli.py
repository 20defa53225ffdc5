"""The ``monai-cbo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .peft.config import PRESETS, choose

__all__ = ["main"]


def _cmd_params(args: argparse.Namespace) -> int:
    from .networks import build_model
    from .peft import PeftConfig, apply_peft, count_parameters

    config = PeftConfig.from_preset(args.preset, rank=args.rank)
    model = build_model(args.model, checkpoint=args.checkpoint)
    apply_peft(model, config)
    counts = count_parameters(model)
    print(json.dumps({"model": args.model, "preset": args.preset, "rank": config.rank, **counts}, indent=2))
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    import torch

    from .reports.speed import encoder_time_per_slice, machine_summary, peak_memory_mib, training_step_times

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for preset in presets:
        choose("preset", preset, PRESETS)
    result: dict = {"model": args.model, "machine": machine_summary(device), "batch": args.batch,
                    "prompts_per_image": args.prompts, "steps": args.steps, "amp": args.amp}
    if not args.skip_encoder:
        result["encoder_per_slice"] = encoder_time_per_slice(args.model, args.steps, device, args.amp)
    steps = training_step_times(args.model, presets, args.batch, args.prompts, args.steps,
                                device=device, amp=args.amp)
    result["train_step"] = {p: {"median_s": round(v["median_s"], 4), "times_s": [round(t, 4) for t in v["times_s"]]}
                            for p, v in steps.items()}
    result["cbo_overhead"] = {
        f"{base}_cbo/{base}": round(steps[f"{base}_cbo"]["median_s"] / steps[base]["median_s"], 4)
        for base in ("lora", "adapter") if base in steps and f"{base}_cbo" in steps
    }
    result["peak_memory_mib"] = round(peak_memory_mib(device), 1)
    print(json.dumps(result, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    from .networks.builders import MODELS

    parser = argparse.ArgumentParser(
        prog="monai-cbo",
        description="Segment Anything for 3D medical volumes with cross-block orchestration (CBO) PEFT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="print trainable parameter counts of a model + preset as JSON",
                       description="Trainable parameter counts (peft, cbo, decoder, total_trainable, total). "
                                   "SAM ViT shapes need no weights for this.")
    p.add_argument("--model", default="litemedsam", choices=list(MODELS), help="model name (default litemedsam)")
    p.add_argument("--preset", default="lora_cbo", choices=list(PRESETS), help="PEFT preset (default lora_cbo)")
    p.add_argument("--rank", type=int, default=None,
                   help="LoRA rank / adapter width (default 4 for LoRA, 16 for the adapter)")
    p.add_argument("--checkpoint", default=None, help="base model weights (not needed for counting)")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("speed", help="time training steps per preset (interleaved) and the encoder per slice",
                       description="Training step time per preset, timed interleaved so ratios are fair; "
                                   "CBO overhead ratios; encoder seconds per slice; peak memory (CUDA "
                                   "allocator peak, or the process's peak resident set on the CPU).")
    p.add_argument("--model", default="litemedsam", choices=list(MODELS))
    p.add_argument("--presets", default="lora,lora_cbo,adapter,adapter_cbo", help="comma-separated presets")
    p.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    p.add_argument("--prompts", type=int, default=2, help="box prompts per image (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per preset after one warm-up (default 5)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="autocast (mixed precision)")
    p.add_argument("--skip-encoder", action="store_true", help="do not time the encoder alone")
    p.set_defaults(func=_cmd_speed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"monai-cbo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
