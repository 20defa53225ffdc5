"""``monai-cbo segment``: volumes in, NIfTI masks out, from prompts or automatically.

The options become a :class:`SegmentPlan` (:func:`plan`) before any volume is read: the task (a bundle's
:class:`~monai_cbo.task.TaskSpec`, or one from the preprocessing options), the adapters, read once, and the
automatic settings; a combination that cannot work fails there, naming the options to change.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .options import (
    add_encoder_runtime_option,
    add_precision_option,
    add_preprocess_options,
    encoder_runtime,
    list_of,
    load_model,
    preprocess_of,
    preprocess_options_given,
)

if TYPE_CHECKING:
    from ..inferers import AutoConfig
    from ..task import TaskSpec

PROMPT_OPTIONS = (
    "--label LABEL, --prompts FILE, --key-box I0,J0,K0,I1,J1,K1 (with --point), a foreground --point I,J,K,1 alone, "
    "or --auto"
)


def add_parser(sub) -> None:
    from ..networks.builders import MODELS

    p = sub.add_parser(
        "segment",
        help="segment a volume or a folder of volumes with prompts; writes NIfTI masks",
        description="Slice-wise prompted segmentation. Masks are written as OUT/<case>_seg.nii.gz "
        "in the input's geometry. A bad case is reported and the others still run "
        "(exit code 1 if any failed).",
    )
    p.add_argument("input", help="image file (.nii/.nii.gz/.nrrd/.mha), DICOM series folder, or a folder of them")
    p.add_argument("-o", "--output", required=True, help="output folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--label",
        help="label map (or folder of them): a box per slice and class, and Dice scores (with --auto: scores only)",
    )
    src.add_argument(
        "--prompts",
        "--boxes3d",
        dest="prompts",
        help="prompt JSON (or folder of <case>.json): 3D boxes, key boxes, points; see monai_cbo.inferers.prompts",
    )
    src.add_argument(
        "--key-box",
        type=list_of(float, 6, "--key-box"),
        metavar="I0,J0,K0,I1,J1,K1",
        action="append",
        help="a box in stored voxel indices, propagated slice by slice. Flat (k0 = k1): drawn on "
        "slice k0; repeat it on other slices of the object (top, middle, bottom) and the slices "
        "between are prompted from both. Thick (k0 < k1): a 3D box; propagation starts on its "
        "middle slice (or --key-slice) and never leaves k0..k1",
    )
    p.add_argument("--key-slice", type=int, default=None, help="with a thick --key-box: the slice to start from")
    p.add_argument(
        "--point",
        type=list_of(float, 4, "--point"),
        action="append",
        metavar="I,J,K,L",
        help="with --key-box: a correction point, L = 1 foreground / 0 background (e.g. where the mask "
        "leaks); it also prompts the slices near K (repeatable). Without a box: the first foreground point "
        "starts the object on its slice (segmented from the clicks, then from the box of what they found) and "
        "it is propagated from there; the other points correct it",
    )
    p.add_argument("--class", dest="label_value", type=int, default=1, help="label value written for --key-box")
    p.add_argument(
        "--auto",
        action="store_true",
        help="no prompt: every slice and class from the --adapter's learned class prompts (the default when no "
        "prompt option is given and the adapter has them); with --label, the label only scores",
    )
    p.add_argument(
        "--auto-refine",
        action="store_true",
        help="with --auto: re-prompt each automatic mask with its box and keep it where both agree (IoU >= 0.5)",
    )
    p.add_argument(
        "--largest-component",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --auto: keep each class's largest 3D connected component (default off; with --bundle, the "
        "bundle's own default, on for the hippocampus)",
    )
    p.add_argument(
        "--z-smooth",
        type=float,
        default=None,
        metavar="W",
        help="with --auto: average each slice's probabilities with its two neighbours' at weight W (default 0, "
        "off; with --bundle, the bundle's own default, 0.5 for the hippocampus)",
    )
    p.add_argument(
        "--classes",
        type=list_of(int, what="--classes"),
        default=None,
        help="with --label: label values to segment, e.g. 1 for the spleen (default all present)",
    )
    p.add_argument("--model", default=None, choices=list(MODELS), help="model (default litemedsam)")
    p.add_argument("--checkpoint", help="base model weights (SAM ViT .pth)")
    p.add_argument(
        "--adapter",
        action="append",
        help="adapter checkpoint written by training; repeat it for an ensemble that averages the adapters' "
        "probabilities (same base model and classes; each slice is encoded once per adapter)",
    )
    p.add_argument(
        "--bundle",
        help="a shipped bundle by name (monai-cbo bundles), or a bundle folder's path (./NAME, such as one written "
        "by monai-cbo adapt): its trained adapter and its task (classes, preprocessing, automatic and propagation "
        "settings)",
    )
    add_preprocess_options(p)
    p.add_argument("--batch-size", type=int, default=None, help="slices per encoder pass (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's)")
    add_precision_option(p)
    add_encoder_runtime_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--timings",
        metavar="FILE.json",
        help="write where the run's seconds went: start-up, model build, read, preprocess, encoder, each decoder "
        "call kind, postprocess, write; slices encoded and in the volume (monai_cbo.timing.case_timing)",
    )
    p.set_defaults(func=run)


@dataclass
class SegmentPlan:
    """What ``segment``'s options decide before any volume is read.

    Attributes:
        task: the bundle's task, or the library's with the preprocessing options.
        adapters: adapter files (none: the zero-shot model); ``payloads`` their contents, read once.
        auto: the automatic settings, or None for a prompted run.
        warning: said before the run (a bundle adapter whose automatic mode failed its test).
    """

    task: TaskSpec
    adapters: list[str] = field(default_factory=list)
    payloads: list[dict] = field(default_factory=list)
    auto: AutoConfig | None = None
    warning: str | None = None


def plan(args: argparse.Namespace) -> SegmentPlan:
    """The :class:`SegmentPlan` of ``segment``'s options.

    Raises:
        ValueError: options that do not go together, a bundle given with preprocessing options, a bundle without
            an adapter and nothing to prompt, or no prompt and no automatic adapter (each message says what to give).
        FileNotFoundError: an unknown bundle (the message lists the names there are).
    """
    from ..bundles import bundle_model, load_bundle
    from ..peft import adapter_class_prompts, read_adapter
    from ..task import TaskSpec

    if args.key_slice is not None and args.key_box is None:
        raise ValueError("--key-slice goes with a thick --key-box (the slice its propagation starts from)")
    if args.point and args.key_box is None:
        if args.prompts is not None or args.label is not None:
            raise ValueError(
                "--point goes with --key-box, or alone to start an object (points in a prompt file go in the file)"
            )
        if not any(point[3] == 1 for point in args.point):
            raise ValueError(
                "--point without --key-box starts an object at a foreground point: give one with L = 1 "
                "(I,J,K,1), or a --key-box"
            )
    prompted = args.prompts is not None or args.key_box is not None or bool(args.point)
    wants_auto = args.auto or args.auto_refine or args.largest_component or args.z_smooth is not None
    adapters, warning = list(args.adapter or []), None
    if args.bundle:
        given = preprocess_options_given(args)
        if given:
            raise ValueError(
                f"--bundle {args.bundle} sets the preprocessing it was trained with; drop {', '.join(given)}"
            )
        bundle = load_bundle(args.bundle)
        task = bundle.task
        if not adapters and bundle.adapter is not None:
            adapters = [str(bundle.adapter)]
            warning = bundle.weak_automatic()
        elif not adapters and (not (prompted or args.label is not None) or wants_auto):
            bundle_model(bundle)  # raises: no adapter, so nothing to segment without a prompt
    else:
        task = TaskSpec(preprocess=preprocess_of(args))
    if wants_auto and prompted:
        raise ValueError(
            "--auto (and --auto-refine, --largest-component, --z-smooth) take no prompt: drop --prompts / --key-box"
        )
    payloads = [read_adapter(a) for a in adapters]
    if not wants_auto and (prompted or args.label is not None):
        return SegmentPlan(task, adapters, payloads)
    without = [a for a, p in zip(adapters, payloads, strict=True) if adapter_class_prompts(p) is None]
    if without or not adapters:
        if wants_auto:
            what = f"adapter {without[0]} has no class prompts" if without else "no --adapter was given"
            raise ValueError(
                f"automatic segmentation needs an adapter trained with automatic steps, and {what}; train one "
                f"(bundle training, or monai-cbo bench --auto-share 0.5) or give a prompt: {PROMPT_OPTIONS}"
            )
        raise ValueError(
            "nothing tells monai-cbo segment where to look: give a prompt or an automatic adapter: "
            f"{PROMPT_OPTIONS} with --adapter A trained with automatic steps"
        )
    auto = replace(
        task.auto,
        refine=args.auto_refine,
        largest_component=task.auto.largest_component if args.largest_component is None else args.largest_component,
        z_smooth=task.auto.z_smooth if args.z_smooth is None else args.z_smooth,
    )
    return SegmentPlan(task, adapters, payloads, auto, warning)


def _check_output_folder(out_dir: Path) -> None:
    """Refuse an output that cannot be the masks' folder before any model is loaded."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(
                    f"-o {out_dir}: {folder} is a file; give a folder for the masks (it is made if missing)"
                )
            if not os.access(folder, os.W_OK):
                raise ValueError(f"-o {out_dir}: {folder} is not writable; give a folder you can write to")
            return


def _check_prompt_files(cases) -> None:
    """Read every case's prompt file before any model is loaded: a batch whose files are all bad stops here
    (exit 2); a bad file in a batch is named now, and its case fails while the others run."""
    from ..inferers.prompts import load_prompt_file

    bad = {}
    for case in cases:
        if case.prompt_file is not None:
            try:
                load_prompt_file(case.prompt_file)
            except (ValueError, FileNotFoundError) as err:
                bad[case.name] = err
    if bad and len(bad) == len(cases):
        raise ValueError("; ".join(str(err) for err in bad.values()))
    for name, err in bad.items():
        print(f"{name} will fail: {err}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "timings", None) is not None:
        from ..timing.case_timing import timed_segment

        return timed_segment(args, _run)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..inferers import KeyPrompt, SliceWiseInferer, find_cases, segment_cases
    from ..inferers.segment import report
    from ..metrics import MetricsTable
    from ..peft import adapter_interaction
    from ..stopwatch import stage

    with stage("build"):  # the adapters are read here
        settings = plan(args)
    if settings.warning and settings.auto is not None:
        print(
            f"monai-cbo segment: warning: {settings.warning}; give a prompt instead: {PROMPT_OPTIONS}", file=sys.stderr
        )
    if args.point and args.key_box is None and not any(adapter_interaction(p) for p in settings.payloads):
        print(
            "monai-cbo segment: warning: --point alone starts the object from a click, and "
            + ("this adapter was" if settings.payloads else "the base model (no adapter) was")
            + " never trained with clicks: from one click it segments little or nothing (zero-shot LiteMedSAM: "
            "0.000 in docs/benchmarks/corrections.md); add a --key-box, or use an adapter trained with clicks "
            "(monai-cbo adapt, whose recipe simulates them by default)",
            file=sys.stderr,
        )
    key = None
    if args.key_box is not None or args.point:
        key = KeyPrompt(args.key_box, args.label_value, args.key_slice, args.point)
    cases = find_cases(
        args.input, label=args.label, prompts=args.prompts, key=key, classes=args.classes, auto=settings.auto
    )
    out_dir = Path(args.output)
    _check_output_folder(out_dir)
    _check_prompt_files(cases)
    with stage("build"):
        model = load_model(args.model, args.checkpoint, settings.adapters, settings.payloads)
        encoder = encoder_runtime(args.encoder_runtime, model, args.device, args.precision, "segment")
        inferer = SliceWiseInferer(
            model, batch_size=args.batch_size, device=args.device, precision=args.precision, encoder=encoder
        )
    task = settings.task
    results = segment_cases(
        inferer, cases, out_dir, task.preprocess, args.overwrite, propagation=task.propagation, verbose=True
    )
    scored = [r for r in results if r.metrics]
    if scored:
        table = MetricsTable()
        for r in scored:
            table.add(r.name, r.metrics)
        table.write_csv(out_dir / "metrics.csv", overwrite=args.overwrite)
    return report(results, out_dir)
