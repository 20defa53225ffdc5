"""The ``monai-cbo`` command line: one module per command, each with its ``add_parser(sub)`` and ``run(args)``.

The commands' modules import what they run only when they run, so ``monai-cbo --help`` and a command's parser
stay light; the rules of what a command does live in the library modules it calls, not here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import stopwatch  # noqa: F401  imported first: its import time marks the command line's start (--timings)
from . import adapt, bench, bundles, demo, params, prompts_bench, report, segment, speed
from .options import join_negative_values

__all__ = ["build_parser", "main"]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``monai-cbo`` parser: every command's own parser. With ``command`` (the one about to run) one of this
    package's, the label server's and gpu-check's parsers are left out: their modules are not imported."""
    parser = argparse.ArgumentParser(
        prog="monai-cbo",
        description="Segment Anything for 3D medical volumes with cross-block orchestration (CBO) PEFT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (params, speed, bundles, segment, adapt, bench, prompts_bench, report, demo):
        module.add_parser(sub)
    if command not in sub.choices:
        from ..label.server import add_parser as add_label_parser
        from ..timing.gpu_check import add_gpu_check_parser

        add_label_parser(sub)
        add_gpu_check_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..utils import keep_freed_memory

    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    keep_freed_memory()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"monai-cbo {args.command}: error: {err}", file=sys.stderr)
        return 2
