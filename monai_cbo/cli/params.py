"""``monai-cbo params``: trainable parameter counts of a model and PEFT preset."""

from __future__ import annotations

import argparse
import json

from ..peft.config import PRESETS


def add_parser(sub) -> None:
    from ..networks.builders import MODELS

    p = sub.add_parser(
        "params",
        help="print trainable parameter counts of a model + preset as JSON",
        description="Trainable parameter counts (peft, cbo, decoder, total_trainable, total). "
        "SAM ViT shapes need no weights for this.",
    )
    p.add_argument("--model", default="litemedsam", choices=list(MODELS), help="model name (default litemedsam)")
    p.add_argument("--preset", default="lora_cbo", choices=list(PRESETS), help="PEFT preset (default lora_cbo)")
    p.add_argument(
        "--rank", type=int, default=None, help="LoRA rank / adapter width (default 4 for LoRA, 16 for the adapter)"
    )
    p.add_argument("--checkpoint", default=None, help="base model weights (not needed for counting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import build_segmenter
    from ..peft import count_parameters

    model = build_segmenter(args.model, args.checkpoint, args.preset, args.rank)
    counts = count_parameters(model)
    print(json.dumps({"model": args.model, "preset": args.preset, "rank": model.peft_config.rank, **counts}, indent=2))
    return 0
