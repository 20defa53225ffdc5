"""One 3D case timed end to end: where the seconds of a ``monai-cbo segment`` run go.

Two halves:

- :func:`timed_segment` is ``monai-cbo segment --timings FILE.json``: it runs the command under a
  :mod:`~monai_cbo.stopwatch` recorder and writes the stage breakdown (atomically; an existing file is refused
  unless ``--overwrite``, as for the masks). The ``startup`` stage runs from the process's start
  (:func:`~monai_cbo.stopwatch.process_start`) to the command's own imports done; ``interpreter_s`` of
  ``startup_detail`` is the part before the command line's first module ran (:data:`~monai_cbo.stopwatch.
  IMPORTED_AT`). ``other_s`` is the total less the stages: option checks, case lookup, propagation's own
  bookkeeping (stop measures, boxes) and the exit.
- :func:`case_timings` is ``monai-cbo speed --case IMAGE LABEL --protocol ...``: per protocol it writes the
  prompt that protocol takes from the label (:func:`~monai_cbo.bench.protocols.protocol_prompt`) to a prompt
  file, runs ONE ``monai-cbo segment --timings`` process on it, and reports its stages, the slices encoded against
  the slices in the volume, and its total against ``slices encoded x encoder seconds per slice``.

How each protocol reaches ``segment``: ``one_key`` and ``three_keys`` as flat ``key_box`` entries, ``box3d`` as
one thick ``key_box`` (the target's tight box on its middle slice, thick over the target's slices, starting on
the middle slice: exactly the prompt of the prompts bench), ``per_slice`` as ``--label LABEL --classes ...``
(a tight box per slice and class; the label then also scores, a ``score`` stage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..stopwatch import IMPORTED_AT, SPAWNED_AT_ENV, Recorder, process_start, recording
from ..utils import check_overwrite, write_atomic

__all__ = ["STAGE_ORDER", "case_timings", "protocol_entries", "timed_segment", "timings_table"]

#: the stages in the order a case runs through them (others, e.g. ``decoder.box+mask``, follow)
STAGE_ORDER = (
    "startup",
    "build",
    "read",
    "preprocess",
    "encoder",
    "decoder.box",
    "decoder.points",
    "decoder.mask",
    "decoder.classes",
    "postprocess",
    "write",
    "score",
)


def timed_segment(args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int:
    """``run(args)`` (segment's own run) with its stages recorded into ``args.timings`` (see the module
    docstring). The file is checked before any work: FileExistsError without ``args.overwrite``."""
    target = check_overwrite(args.timings, args.overwrite)
    started, method = process_start()
    if started is None:  # no start time: count from the command line's first module (a lower bound)
        started, method = IMPORTED_AT, "unknown; counted from the command line's first import (a lower bound)"
    from .. import inferers, metrics  # noqa: F401  what segment's run imports: the start-up's last part
    from ..inferers import segment  # noqa: F401

    ready = time.time()
    recorder = Recorder()
    recorder.add("startup", ready - started)
    with recording(recorder):
        code = run(args)
    end = time.time()
    timings = _timings(recorder, started, method, ready, end)
    timings["exit_code"] = code
    timings["argv"] = sys.argv[1:]
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(timings, indent=2) + "\n"
    write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"), overwrite=args.overwrite)
    return code


def _timings(recorder: Recorder, started: float, method: str, ready: float, end: float) -> dict:
    from ..utils import machine_summary

    figures = recorder.as_dict()
    order = [s for s in STAGE_ORDER if s in figures["stages"]]
    stages = {s: figures["stages"][s] for s in order + [s for s in figures["stages"] if s not in order]}
    total = end - started
    encoded = figures["counters"].get("slices_encoded", 0)
    encoder = figures["stages"].get("encoder", {}).get("seconds", 0.0)
    written = recorder.marks.get("mask_written")
    return {
        "process_start": {"method": method},
        "total_s": round(total, 4),
        "mask_written_s": None if written is None else round(written - started, 4),
        "stages": stages,
        "other_s": round(total - recorder.total, 4),
        "startup_detail": {
            "interpreter_s": round(max(IMPORTED_AT - started, 0.0), 4),
            "imports_s": round(ready - max(IMPORTED_AT, started), 4),
        },
        "counters": {"slices_encoded": encoded, "slices_in_volume": figures["counters"].get("slices_in_volume", 0)},
        "encoder_s_per_slice": round(encoder / encoded, 4) if encoded else None,
        "machine": machine_summary("cpu"),  # names the CPU model and its cores
    }


def _to_voxels(geometry, sliced: np.ndarray) -> np.ndarray:
    """Sliced-view coordinates ``[N, 3]`` -> stored voxel indices (the inverse of ``voxels_to_sliced``)."""
    out = np.empty_like(np.asarray(sliced, dtype=np.float64))
    for axis, (target, flip) in enumerate(geometry.transform):
        c = sliced[:, int(target)]
        out[:, axis] = geometry.stored_shape[axis] - 1 - c if flip < 0 else c
    return out


def _voxel_box(geometry, box: np.ndarray, z0: int, z1: int) -> list[int]:
    """A 2D box XYXY on sliced slices ``z0..z1`` as a stored-voxel box (i0, j0, k0, i1, j1, k1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = _to_voxels(geometry, np.array([[y0, x0, z0], [y1, x1, z1]]))
    return [int(round(v)) for v in np.concatenate([corners.min(axis=0), corners.max(axis=0)])]


def protocol_entries(mask: np.ndarray, geometry, protocol: str, label: int) -> list[dict] | None:
    """The prompt-file entries (stored voxel indices) of ``protocol`` on a target's mask ``[H, W, D]`` in the
    sliced view of ``geometry``; None for ``per_slice`` (given to segment as ``--label``)."""
    from ..bench.protocols import protocol_prompt

    if protocol == "per_slice":
        protocol_prompt(mask, protocol)  # the same checks
        return None
    prompt = protocol_prompt(mask, protocol)
    if prompt.z_range is None:
        boxes = [_voxel_box(geometry, k.box, k.slice, k.slice) for k in prompt.keys]
        return [{"label": label, "key_box": boxes if len(boxes) > 1 else boxes[0]}]
    (key,) = prompt.keys
    lo, hi = prompt.z_range
    axis = next(a for a, (target, _) in enumerate(geometry.transform) if int(target) == 2)
    key_slice = int(_to_voxels(geometry, np.array([[0.0, 0.0, key.slice]]))[0, axis])
    return [{"label": label, "key_box": _voxel_box(geometry, key.box, lo, hi), "key_slice": key_slice}]


def _command() -> list[str]:
    """How a user starts ``monai-cbo``: the installed script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "monai-cbo"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "monai_cbo.cli"]


def case_timings(
    image: str,
    label: str,
    protocols: Sequence[str],
    classes: Sequence[int] | None = None,
    model: str = "litemedsam",
    device: str | None = None,
    encoder_reference: Callable[[], dict] | None = None,
    segment_options: Sequence[str] = (),
    keep: str | Path | None = None,
) -> dict:
    """Time one ``monai-cbo segment`` process per protocol on ``image`` with prompts from ``label``.

    Args:
        image: the volume.
        label: its label map; ``classes`` (default: its one non-zero value) make the target object.
        protocols: of :data:`~monai_cbo.bench.protocols.PROTOCOLS`.
        model: ``--model`` of each run.
        device: ``--device`` of each run (default segment's).
        encoder_reference: measures a reference encoder time per slice (``{"median_s": ...}``: ``monai-cbo
            speed``'s own), called once the inputs are checked, before the runs; for the ratio ``total / (slices
            encoded x encoder s/slice)`` and the issue's 3D-box target. Default None: each run's own.
        segment_options: more options for each ``segment`` run (e.g. ``["--precision", "fp32"]``).
        keep: a folder to keep the prompt files, masks and timings in (default: a temporary one, removed).

    Returns:
        ``{"case", "target", "encoder_per_slice", "protocols": {protocol: figures}}``; see :func:`timings_table`.

    Raises:
        ValueError: an unknown protocol, a label with several values and no ``classes``, a target absent from
            the label, or a ``segment`` run that failed (its error output in the message).
    """
    from ..bench.protocols import PROTOCOLS
    from ..inferers import SliceGeometry, check_label, load_volume

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"--protocol {', '.join(unknown) or '(none)'}: choose from {', '.join(PROTOCOLS)}")
    img = load_volume(image)
    gt, present = check_label(load_volume(label), img)
    if classes is None:
        if len(present) != 1:
            raise ValueError(f"label {label} holds values {present}; choose the target with --classes, e.g. 2")
        classes = present
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"label {label} has no voxel of value(s) {missing}; it holds {present}")
    geometry = SliceGeometry.from_affine(img.affine.numpy(), img.shape[1:])
    target = np.isin(gt, list(classes))
    mask = np.ascontiguousarray(geometry.to_sliced(target))
    present_z = np.nonzero(mask.any(axis=(0, 1)))[0]
    reference = None if encoder_reference is None else encoder_reference()
    per_slice = None if reference is None else reference["median_s"]
    folder = Path(keep) if keep is not None else Path(tempfile.mkdtemp(prefix="monai_cbo_case_"))
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "case": str(image),
        "label": str(label),
        "target": {"classes": list(classes), "slices": int(len(present_z)), "volume_slices": int(mask.shape[-1])},
        "model": model,
        "command": " ".join(_command()),
        "encoder_per_slice": reference,
        "protocols": {},
    }
    try:
        for protocol in protocols:
            out["protocols"][protocol] = _run_protocol(
                image, label, protocol, mask, geometry, target, classes, model, device, segment_options, folder
            )
            figures = out["protocols"][protocol]
            _ratios(figures, per_slice, len(present_z) if protocol == "box3d" else None)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def _run_protocol(image, label, protocol, mask, geometry, target, classes, model, device, options, folder) -> dict:
    import nibabel as nib

    work = folder / protocol
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.json"
    cmd = [*_command(), "segment", str(image), "-o", str(work / "masks"), "--overwrite", "--timings", str(timings)]
    entries = protocol_entries(mask, geometry, protocol, int(classes[0]))
    if entries is None:
        cmd += ["--label", str(label), "--classes", ",".join(str(c) for c in classes)]
    else:
        prompts = work / "prompts.json"
        prompts.write_text(json.dumps({"prompts": entries}), encoding="utf-8")
        cmd += ["--prompts", str(prompts)]
    cmd += ["--model", model, *(["--device", device] if device else []), *options]
    env = dict(os.environ)
    env[SPAWNED_AT_ENV] = repr(time.time())
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not timings.is_file():
        raise ValueError(f"segment ({protocol}) failed with exit code {done.returncode}: {done.stderr.strip()[-2000:]}")
    figures = json.loads(timings.read_text(encoding="utf-8"))
    written = next((work / "masks").glob("*_seg.nii.gz"))
    predicted = np.isin(np.asarray(nib.load(written).dataobj), list(classes))
    overlap = 2 * float((predicted & target).sum()) / max(float(predicted.sum() + target.sum()), 1.0)
    figures.pop("argv", None)
    return {"command": cmd, "wall_s": round(wall, 4), "dice": round(overlap, 4), **figures}


def _ratios(figures: dict, reference: float | None, box_slices: int | None) -> None:
    """Add the ratio of the total to ``slices encoded x encoder s/slice`` (reference and the run's own) and, for a
    3D box, the issue's target ``0.5 x slices in the box x encoder s/slice + 2 s``."""
    encoded = figures["counters"]["slices_encoded"]
    own = figures.get("encoder_s_per_slice")
    per_slice = reference if reference is not None else own
    figures["encoder_reference_s_per_slice"] = None if reference is None else round(reference, 4)
    total = figures["total_s"]
    figures["ratio_total_to_encoded"] = round(total / (encoded * per_slice), 3) if encoded and per_slice else None
    figures["ratio_total_to_run_encoder"] = round(total / (encoded * own), 3) if encoded and own else None
    if box_slices is not None and per_slice:
        goal = 0.5 * box_slices * per_slice + 2.0
        figures["box_target"] = {"slices_in_box": box_slices, "target_s": round(goal, 3), "met": total <= goal}


def timings_table(result: dict) -> str:
    """A Markdown table of :func:`case_timings`' result: one row per protocol, a column per stage."""
    per = result["protocols"]
    stages = list(dict.fromkeys(s for figures in per.values() for s in figures["stages"]))
    stages = [s for s in STAGE_ORDER if s in stages] + [s for s in stages if s not in STAGE_ORDER]
    head = ["protocol", "total s", *[f"{s} s" for s in stages], "other s", "encoded / in volume", "ratio", "Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for protocol, f in per.items():
        cells = [protocol, f"{f['total_s']:.2f}"]
        cells += [f"{f['stages'][s]['seconds']:.2f}" if s in f["stages"] else "–" for s in stages]
        counters = f["counters"]
        ratio = f.get("ratio_total_to_encoded")
        cells += [
            f"{f['other_s']:.2f}",
            f"{counters['slices_encoded']} / {counters['slices_in_volume']}",
            "–" if ratio is None else f"{ratio:.2f}",
            f"{f['dice']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
