"""The ``monai-cbo`` command line: one module per command, each with its ``add_parser(sub)`` and ``run(args)``.

The commands' modules import what they run only when they run, so ``monai-cbo --help`` and a command's parser
stay light; the rules of what a command does live in the library modules it calls, not here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, bundles, demo, params, prompts_bench, report, segment, speed
from .options import join_negative_values

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``monai-cbo`` parser: every command's own parser."""
    from ..label.server import add_parser as add_label_parser
    from ..timing.gpu_check import add_gpu_check_parser

    parser = argparse.ArgumentParser(
        prog="monai-cbo",
        description="Segment Anything for 3D medical volumes with cross-block orchestration (CBO) PEFT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (params, speed, bundles, segment, bench, prompts_bench, report, demo):
        command.add_parser(sub)
    add_label_parser(sub)
    add_gpu_check_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..utils import keep_freed_memory

    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    keep_freed_memory()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"monai-cbo {args.command}: error: {err}", file=sys.stderr)
        return 2
