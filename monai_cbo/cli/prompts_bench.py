"""``monai-cbo prompts-bench``: prompt protocols scored on a suite of labelled volumes; the propagation sweep."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from .options import add_encoder_runtime_option, add_precision_option, encoder_runtime, list_of, load_model, setting


def add_parser(sub) -> None:
    from ..networks.builders import MODELS

    p = sub.add_parser(
        "prompts-bench",
        help="score prompt protocols (per-slice boxes, one key box, 3D box, three "
        "key boxes) on a suite of labelled volumes; --sweep tunes the propagation settings",
        description="For every case and target of a suite (docs/benchmarks/propagation/suite.json), "
        "prompts from its label with each protocol, propagates, and scores 3D Dice, its "
        "ratio to per-slice boxes and the slices predicted outside the true extent. "
        "--sweep first tunes the propagation settings on the suite's tune part (the "
        "validation part never influences a choice).",
    )
    p.add_argument("suite", help="suite JSON: sets of cases with targets and a tune / validation part")
    p.add_argument("-o", "--out", required=True, help="output folder (rows.csv, summary.json/.md, sweep.csv)")
    p.add_argument("--data-root", default="../shared/data", help="folder the suite's paths are relative to")
    p.add_argument(
        "--sets",
        type=list_of(str, what="--sets"),
        default=None,
        help="comma-separated sets of the suite to run (default all)",
    )
    p.add_argument("--sweep", action="store_true", help="tune the propagation settings on the tune part first")
    p.add_argument(
        "--set",
        dest="set_option",
        type=setting,
        action="append",
        metavar="NAME=VALUE",
        help="a propagation setting (monai_cbo.inferers.PropagationConfig), e.g. min_overlap=0.5; the "
        "start of a sweep (repeatable)",
    )
    p.add_argument(
        "--clicks",
        type=int,
        default=0,
        help="also score the interactive protocol: a 3D box, then this many rounds of one simulated correction "
        "click each where the mask is most wrong (Dice per round, its AUC, time per round against the first "
        "answer, slices changed); e.g. 5. Default 0: off",
    )
    p.add_argument(
        "--click-start",
        action="store_true",
        help="with --clicks: also score the interactive protocol started by one foreground click (at the "
        "structure's deepest voxel, no box) instead of a 3D box",
    )
    p.add_argument("--cache-dir", default=None, help="keep slice embeddings here (4 MiB a slice) for later runs")
    p.add_argument("--model", default=None, choices=list(MODELS), help="model (default litemedsam)")
    p.add_argument("--checkpoint", help="base model weights (SAM ViT .pth)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--adapter", help="adapter checkpoint written by training")
    source.add_argument(
        "--bundle",
        help="a bundle (a shipped one's name or a folder's path, such as one monai-cbo adapt wrote): its adapter, "
        "and its propagation settings as the start (--set changes them)",
    )
    add_precision_option(p)
    add_encoder_runtime_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.prompting import run_prompts_bench
    from ..inferers import PropagationConfig

    start = PropagationConfig()
    if args.bundle:
        from ..bundles import bundle_model, load_bundle

        bundle = load_bundle(args.bundle)
        if bundle.adapter is None:
            bundle_model(bundle)  # raises, saying how to get an adapter
        args.adapter, start = str(bundle.adapter), bundle.task.propagation
    config = start.replace(**dict(args.set_option or []))
    model = load_model(args.model, args.checkpoint, [args.adapter] if args.adapter else [])
    tag = args.model or "litemedsam"
    for weights in (args.checkpoint, args.adapter):  # the embedding cache is keyed by the weights' content
        if weights:
            tag += f"+{Path(weights).name}:{hashlib.sha1(Path(weights).read_bytes()).hexdigest()[:12]}"
    result = run_prompts_bench(
        args.suite,
        args.data_root,
        args.out,
        model,
        tag,
        config,
        sweep=args.sweep,
        sets=args.sets,
        cache_dir=args.cache_dir,
        log=lambda line: print(line, flush=True),
        precision=args.precision,
        clicks=args.clicks,
        click_start=args.click_start,
        encoder=encoder_runtime(args.encoder_runtime, model, None, args.precision, "prompts-bench"),
    )
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    print(
        f"settings used: {json.dumps(result['config'])}\nresults in {args.out} (rows.csv, summary.json, summary.md"
        f"{', sweep.csv' if args.sweep else ''})"
    )
    return 0
