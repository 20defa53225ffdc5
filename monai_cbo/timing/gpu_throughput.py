"""The ``throughput`` step of ``monai-cbo gpu-check``: training and inference slices/s under autocast (bf16,
fp16) per model and batch size, stopping at the first out-of-memory; peak GPU memory; each against its arithmetic
floor, the FLOPs per slice counted by ``torch.utils.flop_counter.FlopCounterMode`` (:func:`flops_per_slice`) over
the bf16 matrix-product rate measured in the same run (:func:`matmul_rate`)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

from .gpu_config import GpuCheck

__all__ = ["DTYPES", "flops_per_slice", "matmul_rate", "run_throughput"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
