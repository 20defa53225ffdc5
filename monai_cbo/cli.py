"""The ``monai-cbo`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .peft.config import ABLATION_PRESETS, PRESETS
from .utils import check_option

__all__ = ["main"]


def _cmd_params(args: argparse.Namespace) -> int:
    from .models import build_segmenter
    from .peft import count_parameters

    model = build_segmenter(args.model, args.checkpoint, args.preset, args.rank)
    counts = count_parameters(model)
    print(json.dumps({"model": args.model, "preset": args.preset, "rank": model.peft_config.rank, **counts}, indent=2))
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    import torch

    from .timing.speed import (
        encoder_time_per_slice,
        machine_summary,
        peak_memory_mib,
        training_step_times,
        volume_time,
    )

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.speedups:
        from .timing.speedups import measure_speedups

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
        p: {"median_s": round(v["median_s"], 4), "times_s": [round(t, 4) for t in v["times_s"]]}
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


def _list_of(kind: Callable[[str], Any], n: int | None = None, what: str = "values") -> Callable[[str], list]:
    """The one parser of comma-separated option values: ``kind`` per item (blanks and empty items dropped);
    exactly ``n`` items when given. Errors become argparse errors that show the message."""

    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None
        if n is not None and len(values) != n:
            raise argparse.ArgumentTypeError(f"{what} needs {n} comma-separated values, got {text!r}")
        return values

    return parse


def _adapters(args: argparse.Namespace) -> list[str]:
    """The adapter files of a command: ``segment`` takes ``--adapter`` repeated (an ensemble), the others one."""
    adapters = getattr(args, "adapters", None)
    if adapters:
        return list(adapters)
    return [args.adapter] if getattr(args, "adapter", None) else []


def _absolute(path: str) -> str:
    return str(Path(path).resolve())


def _load_model(args: argparse.Namespace):
    from .models import load_ensemble
    from .networks import build_model

    adapters = _adapters(args)
    if adapters:  # one file: that adapter's model; segment --adapter A --adapter B: a mean-probability ensemble
        model = load_ensemble(adapters, checkpoint=args.checkpoint)
        if args.model and args.model != model.model_name:
            raise ValueError(f"--model {args.model} but adapter {adapters[0]} was trained on {model.model_name}")
        return model
    return build_model(args.model or "litemedsam", checkpoint=args.checkpoint)


def _bundle_for_segment(args: argparse.Namespace):
    """``segment --bundle NAME``: the bundle's preprocessing, and its adapter as ``args.adapter`` unless one is
    given. Fails before any volume is read (unknown bundle, preprocessing options given too, no adapter and no
    prompt)."""
    from .bundles import bundle_auto_defaults, bundle_model, bundle_preprocess, bundle_propagation, load_bundle
    from .inferers import Preprocess

    default = Preprocess()
    given = [
        flag
        for flag, value, base in (
            ("--modality", args.modality, default.modality),
            ("--ct-window", tuple(args.ct_window), default.ct_window),
            ("--channels", args.channels, default.channels),
            ("--view", args.view, default.view),
        )
        if value != base
    ]
    if given:
        raise ValueError(f"--bundle {args.bundle} sets the preprocessing it was trained with; drop {', '.join(given)}")
    info = load_bundle(args.bundle)
    args.bundle_auto = bundle_auto_defaults(info)
    args.bundle_propagation = bundle_propagation(info)
    if not args.adapter:
        prompted = args.label is not None or args.prompts is not None or args.key_box is not None
        if info.adapter is not None:
            args.adapter = str(info.adapter)
            args.adapters = [args.adapter]
            args.bundle_record = info.record
        elif not prompted or args.auto or args.auto_refine or args.largest_component or args.z_smooth is not None:
            bundle_model(info)  # raises: no adapter, so nothing to segment without a prompt
    return bundle_preprocess(info)


PROMPT_OPTIONS = "--label LABEL, --prompts FILE, --key-box I0,J0,K0,I1,J1,K1 (with --point), or --auto"


def _auto_mode(args: argparse.Namespace):
    """The :class:`AutoConfig` of ``segment``'s options, or None for a prompted run. Decided from the options and
    the adapter file alone, before any volume is read."""
    from .inferers import AutoConfig
    from .peft import adapter_class_prompts, read_adapter

    prompted = args.prompts is not None or args.key_box is not None
    wants_auto = args.auto or args.auto_refine or args.largest_component or args.z_smooth is not None
    if wants_auto and prompted:
        raise ValueError(
            "--auto (and --auto-refine, --largest-component, --z-smooth) take no prompt: drop --prompts / --key-box"
        )
    if not wants_auto and (prompted or args.label is not None):
        return None
    without = [a for a in _adapters(args) if adapter_class_prompts(read_adapter(a)) is None]
    if without or not _adapters(args):
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
    defaults = getattr(args, "bundle_auto", None) or {}
    largest = args.largest_component if args.largest_component is not None else defaults.get("largest_component")
    smooth = args.z_smooth if args.z_smooth is not None else defaults.get("z_smooth", 0.0)
    return AutoConfig(refine=args.auto_refine, largest_component=bool(largest), z_smooth=smooth)


def _cmd_bundles(args: argparse.Namespace) -> int:
    from .bundles import list_bundles

    infos = list_bundles()
    if not infos:
        print("no bundles found: monai-cbo bundles needs a source checkout (pip install -e .)", file=sys.stderr)
        return 1
    for info in infos:
        print(f"{info.name}: {info.metadata.get('task', '')}")
        print(f"  classes: {', '.join(info.class_names) or '-'}")
        if info.adapter is None:
            reason = info.metadata.get("no_adapter_reason")
            print(f"  adapter: none shipped{' (' + reason + ')' if reason else ''}; train it with its train.json")
            continue
        record = info.record
        print(f"  adapter: {info.adapter} ({record.get('trained_on', 'training data not recorded')})")
        if record.get("note"):
            print(f"  note: {record['note']}")
        for mode, dice in (record.get("test_dice") or {}).items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
            print(f"  test Dice ({mode}): {scores}")
    return 0


#: below this recorded automatic test Dice, segment --bundle warns before running a bundle's adapter without a prompt
WEAK_AUTOMATIC_DICE = 0.5


def _warn_weak_automatic(args: argparse.Namespace, auto) -> None:
    """A bundle's adapter whose record says its automatic mode fails (a smoke model) still runs, with a warning."""
    record = getattr(args, "bundle_record", None) or {}
    mean = (record.get("test_dice") or {}).get("automatic", {}).get("mean")
    if auto is not None and mean is not None and mean < WEAK_AUTOMATIC_DICE:
        print(
            f"monai-cbo segment: warning: {args.bundle}'s adapter scored automatic Dice {mean:.3f} on its test cases "
            f"({record.get('note') or 'see its models/adapter.json'}); give a prompt instead: {PROMPT_OPTIONS}",
            file=sys.stderr,
        )


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
    from .inferers.prompts import load_prompt_file

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


def _cmd_segment(args: argparse.Namespace) -> int:
    from .inferers import KeyPrompt, Preprocess, SliceWiseInferer, find_cases, segment_cases
    from .inferers.segment import report
    from .metrics import MetricsTable

    if (args.key_slice is not None or args.point) and args.key_box is None:
        raise ValueError("--key-slice and --point go with --key-box (points in a prompt file go with its key boxes)")
    args.adapters = list(args.adapter or [])  # repeated: an ensemble of adapters
    args.adapter = args.adapters[0] if args.adapters else None
    pre = None
    if args.bundle:
        pre = _bundle_for_segment(args)
    auto = _auto_mode(args)
    _warn_weak_automatic(args, auto)
    key = None if args.key_box is None else KeyPrompt(args.key_box, args.label_value, args.key_slice, args.point)
    cases = find_cases(args.input, label=args.label, prompts=args.prompts, key=key, classes=args.classes, auto=auto)
    _check_output_folder(Path(args.output))
    _check_prompt_files(cases)
    pre = pre or Preprocess(args.modality, tuple(args.ct_window), args.channels, args.view)
    inferer = SliceWiseInferer(_load_model(args), batch_size=args.batch_size, device=args.device, amp=not args.no_amp)
    out_dir = Path(args.output)
    propagation = getattr(args, "bundle_propagation", None)  # a bundle's own settings; else the library's
    results = segment_cases(inferer, cases, out_dir, pre, args.overwrite, propagation=propagation, verbose=True)
    scored = [r for r in results if r.metrics]
    if scored:
        table = MetricsTable()
        for r in scored:
            table.add(r.name, r.metrics)
        table.write_csv(out_dir / "metrics.csv", overwrite=args.overwrite)
    return report(results, out_dir)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    if args.init_adapter:  # its preset and rank unless given: the file says how it was built
        from .peft import read_adapter

        saved = read_adapter(args.init_adapter)["peft_config"]
        args.presets = args.presets or [saved["preset"]]
        if args.rank is None and args.presets == [saved["preset"]]:
            args.rank = saved["rank"]
    args.presets = args.presets or list(ABLATION_PRESETS)
    # every BenchConfig field is an option whose dest is the field's name (the parser below)
    config = BenchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)})
    import shlex

    from .bench.runner import BenchFailed

    try:
        run_bench(config, command=shlex.join(["monai-cbo", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None)
    except BenchFailed as err:
        print(f"monai-cbo bench: {err}", file=sys.stderr)
        return 1
    print(f"results in {args.out}; write the report with: monai-cbo report {args.out}")
    return 0


def _cmd_prompts_bench(args: argparse.Namespace) -> int:
    from .bench.prompting import run_prompts_bench
    from .inferers import PropagationConfig

    config = PropagationConfig().replace(**dict(args.set_option or []))
    model = _load_model(args)
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
    )
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    print(
        f"settings used: {json.dumps(result['config'])}\nresults in {args.out} (rows.csv, summary.json, summary.md"
        f"{', sweep.csv' if args.sweep else ''})"
    )
    return 0


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, e.g. min_overlap=0.5, got {text!r}")
    parsed = {"true": True, "false": False}.get(value.lower())
    if parsed is None:
        try:
            parsed = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--set {name}: {value!r} is not a number or true/false") from None
    return name.strip(), parsed


def _cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import write_report

    for path in write_report(args.run_dir, overlays=args.overlays, overwrite=args.overwrite):
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import hippocampus_demo, synthetic_demo

    if args.data is None:
        return synthetic_demo(args.out or "runs/demo", args.cases, args.epochs or 4, args.preset, args.seed)
    return hippocampus_demo(
        args.data, args.out or "runs/demo_hippocampus", args.samples, args.epochs or 10, args.preset, args.seed
    )


def _add_preprocess_args(p: argparse.ArgumentParser) -> None:
    """How volumes become model input (:class:`~monai_cbo.inferers.Preprocess`): shared by segment and bench."""
    p.add_argument(
        "--modality",
        default="auto",
        choices=["auto", "ct", "mri"],
        help="intensity scaling: CT window or MRI percentiles (default auto: CT if air in HU is found)",
    )
    p.add_argument(
        "--window",
        dest="ct_window",
        type=_list_of(float, 2, "--window"),
        default=[-500.0, 1000.0],
        help="CT window lo,hi in HU (default -500,1000)",
    )
    p.add_argument(
        "--channels", type=_list_of(int, what="--channels"), default=None, help="input channels to use, e.g. 0,1,3"
    )
    p.add_argument(
        "--view",
        default="axial",
        choices=["axial", "coronal", "sagittal"],
        help="slicing direction after reorienting to RAS (default axial, as the bundles train)",
    )


def _parser() -> argparse.ArgumentParser:
    from .networks.builders import MODELS
    from .timing.speed import DEFAULT_SPEED_PRESETS

    parser = argparse.ArgumentParser(
        prog="monai-cbo",
        description="Segment Anything for 3D medical volumes with cross-block orchestration (CBO) PEFT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=_cmd_params)

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
        type=_list_of(str, what="--presets"),
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
        type=_list_of(int, what="--classes"),
        default=None,
        help="with --volume: label values to prompt (default all present)",
    )
    p.add_argument(
        "--speedups",
        action="store_true",
        help="instead: before/after ratios of the CPU speed-ups (feature caches, inference_mode, "
        "channels-last, torch.compile), each with the largest output difference",
    )
    p.add_argument("--no-compile", action="store_true", help="with --speedups: skip torch.compile (slow to compile)")
    p.set_defaults(func=_cmd_speed)

    p = sub.add_parser(
        "bundles",
        help="list the shipped bundles: classes, trained adapter and its test Dice",
        description="The bundles of this checkout (bundles/), with what their adapter was trained on and scores.",
    )
    p.set_defaults(func=_cmd_bundles)

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
        type=_list_of(float, 6, "--key-box"),
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
        type=_list_of(float, 4, "--point"),
        action="append",
        metavar="I,J,K,L",
        help="with --key-box: a correction point, L = 1 foreground / 0 background (e.g. where the mask "
        "leaks); it also prompts the slices near K (repeatable)",
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
        type=_list_of(int, what="--classes"),
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
        help="a shipped bundle by name (monai-cbo bundles): its trained adapter, classes and preprocessing",
    )
    _add_preprocess_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="slices per encoder pass (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's)")
    p.add_argument("--no-amp", action="store_true", help="no autocast on CUDA")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "bench",
        help="ablation: train and score PEFT presets x seeds on one dataset (resumable)",
        description="Trains every preset for the same budget (steps x slices, cosine LR) with each "
        "seed, segments the evaluation split with box prompts from its labels and keeps "
        "per run: adapter, per-case metrics, masks, result.json. Re-running the same "
        "command resumes: finished (preset, seed) runs are not redone.",
    )
    p.add_argument("datalist", type=_absolute, help="datalist JSON written by a data_prep/ script (fixed split)")
    p.add_argument("-o", "--out", required=True, help="bench folder (created; resumed if it exists)")
    p.add_argument(
        "--dataset-dir", type=_absolute, default=None, help="base folder of the datalist's paths (default: its own)"
    )
    p.add_argument(
        "--presets",
        type=_list_of(str, what="--presets"),
        default=None,
        help=f"comma-separated presets (default {','.join(ABLATION_PRESETS)}, or --init-adapter's preset; add "
        "'full' for full fine-tuning)",
    )
    p.add_argument(
        "--seeds", type=_list_of(int, what="--seeds"), default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)"
    )
    p.add_argument("--model", default="litemedsam", choices=list(MODELS))
    p.add_argument("--checkpoint", default=None, help="base model weights (SAM ViT .pth)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank / adapter width (default 4 / 16)")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run (default 60)")
    p.add_argument("--batch", type=int, default=2, help="2D slices per step (default 2)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate, cosine to 0 (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--jitter", type=int, default=5, help="training box jitter in model pixels (default 5)")
    p.add_argument("--min-pixels", type=int, default=4, help="pixels a class needs on a slice to be prompted (4)")
    p.add_argument(
        "--classes",
        type=_list_of(int, what="--classes"),
        default=None,
        help="label values to prompt, e.g. 1,2 (default: all present)",
    )
    p.add_argument("--train-split", default="training", help="datalist list to train on (default training)")
    p.add_argument("--eval-split", default="test", help="datalist list to score (default test)")
    p.add_argument("--max-train-cases", type=int, default=None, help="use the first N training cases only")
    p.add_argument("--max-eval-cases", type=int, default=None, help="score the first N evaluation cases only")
    _add_preprocess_args(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no autocast on CUDA")
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
        help="peak LR of the decoder steps, cosine to 0 (default a third of --lr)",
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
    p.set_defaults(func=_cmd_bench)

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
        type=_list_of(str, what="--sets"),
        default=None,
        help="comma-separated sets of the suite to run (default all)",
    )
    p.add_argument("--sweep", action="store_true", help="tune the propagation settings on the tune part first")
    p.add_argument(
        "--set",
        dest="set_option",
        type=_setting,
        action="append",
        metavar="NAME=VALUE",
        help="a propagation setting (monai_cbo.inferers.PropagationConfig), e.g. min_overlap=0.5; the "
        "start of a sweep (repeatable)",
    )
    p.add_argument("--cache-dir", default=None, help="keep slice embeddings here (4 MiB a slice) for later runs")
    p.add_argument("--model", default=None, choices=list(MODELS), help="model (default litemedsam)")
    p.add_argument("--checkpoint", help="base model weights (SAM ViT .pth)")
    p.add_argument("--adapter", help="adapter checkpoint written by training")
    p.set_defaults(func=_cmd_prompts_bench)

    p = sub.add_parser(
        "report",
        help="write report.md and report.html from a bench folder",
        description="Paper-style table (trainable parameters PEFT / CBO / decoder; Dice, HD95, NSD "
        "mean ± std over seeds and cases), per-case tables, box plots, overlays of the "
        "best and worst cases, and the paper's pooled 2D Dice, labelled as such.",
    )
    p.add_argument("run_dir", help="folder written by monai-cbo bench")
    p.add_argument("--overlays", type=int, default=2, help="best and worst cases to show per class (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "demo",
        help="the embedded demo (synthetic CT, train, evaluate), or with --data the real-data hippocampus demo",
        description="Without --data: generates a small synthetic CT data set, trains the spleen bundle "
        "(LiteMedSAM + lora_cbo) for a short schedule, evaluates it and writes NIfTI masks and a Dice table; "
        "needs no data and no internet, about 5 minutes on 2 CPU cores. With --data DIR (an MSD "
        "Task04_Hippocampus folder): segments cases the shipped hippocampus adapter never saw with no prompt, "
        "beside zero-shot LiteMedSAM with label boxes, writes masks and PNG overlays, then fine-tunes a short "
        "lora_cbo run on two of them and scores it on the others; minutes on 2 CPU cores. The output "
        "folder is the demo's own: a second run replaces it.",
    )
    p.add_argument("--data", default=None, help="an MSD Task04_Hippocampus folder: run the real-data demo on it")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo_hippocampus)")
    p.add_argument("--cases", type=int, default=6, help="synthetic cases: 1 validation, 1 test, the rest train (6)")
    p.add_argument(
        "--samples", type=int, default=5, help="with --data: held-out cases (2 fine-tune, 1 validate, rest score; 5)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; with --data 10)")
    p.add_argument("--preset", default="lora_cbo", choices=list(PRESETS), help="PEFT preset (default lora_cbo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    from .label.server import add_parser as add_label_parser

    add_label_parser(sub)

    from .timing.gpu_check import add_gpu_check_parser

    add_gpu_check_parser(sub)
    return parser


_NEGATIVE_VALUE = re.compile(r"-\.?\d[\d.eE+-]*(,[-+]?[\d.eE+-]+)*")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--window -160,240`` as ``--window=-160,240``: argparse takes a value that starts with ``-`` for an
    option unless it is one plain number, so a list of numbers starting with a negative one needs the ``=``."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUE.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .utils import keep_freed_memory

    args = _parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    keep_freed_memory()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"monai-cbo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
