"""The ``monai-cbo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .peft.config import PRESETS

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
