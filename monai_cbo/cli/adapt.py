"""``monai-cbo adapt``: a few labelled volumes become a user bundle (:func:`monai_cbo.adapt.adapt`)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .options import add_precision_option, add_preprocess_options, preprocess_of


def add_parser(sub) -> None:
    from ..networks.builders import MODELS
    from ..peft.config import PRESETS

    p = sub.add_parser(
        "adapt",
        help="train an adapter on a few labelled volumes and write it as a bundle (segment --bundle PATH)",
        description="Turns labelled volumes of a structure into a user bundle: an adapter of a few hundred kB, its "
        "task and its record, which segment --bundle PATH, label --bundle PATH, bundles PATH and python -m "
        "monai.bundle run take as they take the shipped bundles. Every volume is checked before training; "
        "training runs for --minutes (or --steps), validates on held-back volumes (4 or more) or slices (fewer), "
        "keeps the best validated weights and stops early when validation stops improving. Ctrl-C (or SIGTERM: "
        "kill, a scheduler's time limit) keeps the run: continue it with the same command and --resume.",
    )
    p.add_argument(
        "images",
        metavar="IMAGES",
        help="a folder of volumes (NIfTI, NRRD, MetaImage files or DICOM series folders), or a MONAI datalist JSON "
        "(its 'training' list; then no LABELS)",
    )
    p.add_argument(
        "labels",
        metavar="LABELS",
        nargs="?",
        help="a folder of label maps, one per image, matched by case name (case.nii.gz, case_seg.nii.gz; an "
        "nnU-Net image case_0000.nii.gz matches case.nii.gz)",
    )
    p.add_argument("-o", "--out", required=True, help="a new folder for the bundle (nothing existing is overwritten)")
    p.add_argument(
        "--classes",
        default=None,
        metavar="V:NAME,...",
        help="the label values to learn and their names, e.g. 1:spleen,2:liver (other values count as "
        "background); a class covering several values joins them with +, for nested labels: "
        "1+2+4:whole tumour,1+4:tumour core,4:enhancing (larger regions first), or brats2015 / brats2021 / "
        "brats2023 for those conventions' WT, TC, ET; default every value present, named by its number",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="wall-clock budget of the whole command, loading and validation included (default 10)",
    )
    budget.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train the whole adapter exactly this many steps instead (reproducible); the decoder stage then runs "
        "--decoder-steps",
    )
    p.add_argument(
        "--decoder-steps",
        type=int,
        default=None,
        help="with --steps: steps of the decoder stage (the encoder frozen, each slice encoded once, steps at the "
        "decoder's cost); default 0",
    )
    p.add_argument(
        "--decoder-share",
        type=float,
        default=None,
        help="with --minutes: the share of the training time for the decoder stage (default: the recipe's)",
    )
    p.add_argument(
        "--decoder-slices",
        type=int,
        default=None,
        help="most training slices the decoder stage trains on (each is encoded once; default: the recipe's)",
    )
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="PEFT preset (default: the recipe's)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--auto-share", type=float, default=None, help="share of automatic steps (default: the recipe's)")
    p.add_argument(
        "--cbo-lr-mult",
        type=float,
        default=None,
        help="learning rate of CBO's relation tensors and heads, as a multiple of --learning-rate (default: the "
        "recipe's)",
    )
    p.add_argument(
        "--walk-boxes",
        type=float,
        default=None,
        help="share of box steps prompted with the neighbouring slice's grown box, as a one-key-box walk prompts "
        "each slice (default: the recipe's)",
    )
    p.add_argument(
        "--walk-prompt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with walk boxes: a learned walk prompt tells the adapter which boxes are a walk's, so a drawn box "
        "keeps its meaning (default: the recipe's)",
    )
    p.add_argument(
        "--walk-stage",
        choices=("both", "decoder"),
        default=None,
        help="where walk boxes train: both stages, or the decoder stage only, after the whole adapter has trained on "
        "tight boxes (default: the recipe's)",
    )
    p.add_argument(
        "--click-share",
        type=float,
        default=None,
        help="share of box steps that simulate a user's clicks, so the adapter learns corrections (default: the "
        "recipe's)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="initialisation, slice order and jitter (default: the recipe's, 0)"
    )
    p.add_argument(
        "--bundle",
        default=None,
        metavar="NAME|PATH",
        help="start from a bundle (a shipped one by name, or a bundle folder): its recipe (train.json's 'recipe'), "
        "classes and preprocessing; the options above override its recipe and --classes its classes. What the "
        "label server's train task runs",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument(
        "--no-stop-sweep",
        dest="stop_sweep",
        action="store_false",
        help="keep the library's propagation stop rules instead of choosing them for this adapter on the volumes "
        "(the sweep takes up to 30%% of --minutes)",
    )
    p.add_argument(
        "--allow-few-slices",
        action="store_true",
        help="train even when a class shows on fewer than 8 slices of the volumes (refused by default: such an "
        "adapter overfitted them and segmented unseen cases far below zero-shot, docs/benchmarks/fewshot.md)",
    )
    p.add_argument("--model", default="litemedsam", choices=sorted(MODELS), help="base model (default litemedsam)")
    p.add_argument("--checkpoint", default=None, help="the base model's weights file (SAM ViT-B/L/H)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda when there is one)")
    add_preprocess_options(p)
    add_precision_option(p, training=True)
    p.set_defaults(func=run)


@contextmanager
def _terminate_keeps_the_run() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's time limit, a container stopping) ends the run as Ctrl-C does: the
    training checkpoints and the command says how to resume. Outside the main thread signals cannot be caught:
    nothing changes there."""

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..adapt import Budget, InputProblems, Recipe, adapt, from_bundle, parse_class_names
    from .options import preprocess_options_given

    changes = {
        k: v
        for k, v in (
            ("preset", args.preset),
            ("learning_rate", args.learning_rate),
            ("auto_share", args.auto_share),
            ("decoder_share", args.decoder_share),
            ("decoder_slices", args.decoder_slices),
            ("click_share", args.click_share),
            ("walk_boxes", args.walk_boxes),
            ("walk_prompt", args.walk_prompt),
            ("walk_stage", args.walk_stage),
            ("cbo_lr_mult", args.cbo_lr_mult),
            ("seed", args.seed),
        )
        if v is not None
    }
    try:
        classes = parse_class_names(args.classes)
        recipe, preprocess = Recipe(), preprocess_of(args)
        if args.bundle:
            given = preprocess_options_given(args)
            if given:
                raise ValueError(f"--bundle {args.bundle} sets the preprocessing; drop {', '.join(given)}")
            recipe, bundle_classes, preprocess = from_bundle(args.bundle)
            classes = classes or bundle_classes
        recipe = dataclasses.replace(recipe, **changes)
        if args.steps is not None:
            budget = Budget(minutes=None, steps=args.steps, decoder_steps=args.decoder_steps)
        else:
            budget = Budget(minutes=args.minutes, decoder_steps=args.decoder_steps)
    except (ValueError, FileNotFoundError) as err:
        print(f"monai-cbo adapt: {err}", file=sys.stderr)
        return 2
    command = "monai-cbo " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["adapt"] else ""
    try:
        with _terminate_keeps_the_run():
            adapt(
                args.images,
                args.labels,
                args.out,
                class_names=classes,
                preprocess=preprocess,
                recipe=recipe,
                budget=budget,
                model=args.model,
                checkpoint=args.checkpoint,
                device=args.device,
                precision=args.precision,
                resume=args.resume,
                stop_sweep=args.stop_sweep,
                allow_few_slices=args.allow_few_slices,
                command=command,
            )
    except InputProblems as err:
        print(f"monai-cbo adapt: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nmonai-cbo adapt: interrupted; the run is kept: add --resume to the same command to continue it",
            file=sys.stderr,
        )
        return 130
    return 0
