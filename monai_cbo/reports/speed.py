"""Speed and memory figures: training step time per preset, encoder time per slice, peak memory.

Timings on a shared machine are noisy, so presets are timed *interleaved* (one step of each in turn,
repeated) and compared by the ratio of their medians; absolute seconds are reported beside them.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..networks import build_model
from ..peft import PeftConfig, apply_peft, optimizer_param_groups

__all__ = [
    "encoder_time_per_slice",
    "machine_summary",
    "peak_memory_mib",
    "training_step_times",
    "volume_time",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _batch(size: int, batch: int, prompts: int, device: torch.device, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    lo = torch.randint(0, size // 2, (batch, prompts, 2), generator=g).float()
    hi = lo + torch.randint(size // 8, size // 2, (batch, prompts, 2), generator=g).float()
    boxes = torch.cat([lo, hi.clamp(max=size - 1)], dim=-1)
    target = torch.zeros(batch, prompts, 1, size, size)
    for b in range(batch):
        for p in range(prompts):
            x0, y0, x1, y1 = boxes[b, p].long().tolist()
            target[b, p, 0, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return image.to(device), boxes.to(device), target.to(device)


def training_step_times(
    model_name: str = "litemedsam",
    presets: Sequence[str] = ("lora", "lora_cbo", "adapter", "adapter_cbo"),
    batch: int = 1,
    prompts: int = 2,
    steps: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    amp: bool = False,
    seed: int = 0,
) -> dict[str, dict]:
    """Median wall time of one optimizer step (forward, Dice-free BCE loss, backward, Adam) per preset.

    All presets are built first, then stepped in turn ``steps`` times after ``warmup`` rounds, so slow
    phases of the machine hit every preset alike. Returns ``{preset: {"median_s", "times_s"}}``.
    """
    device = torch.device(device)
    models, opts = {}, {}
    for preset in presets:
        torch.manual_seed(seed)
        model = apply_peft(build_model(model_name, seed=seed), PeftConfig.from_preset(preset)).to(device).train()
        models[preset] = model
        groups = optimizer_param_groups(model, lr=1e-5)
        opts[preset] = torch.optim.Adam(groups) if groups else None
    image, boxes, target = _batch(next(iter(models.values())).img_size, batch, prompts, device, seed)
    times: dict[str, list[float]] = {p: [] for p in presets}
    for round_ in range(warmup + steps):
        for preset in presets:
            model, opt = models[preset], opts[preset]
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, enabled=amp):
                logits = model(image, boxes=boxes).masks
                loss = F.binary_cross_entropy_with_logits(logits.float(), target)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            _sync(device)
            if round_ >= warmup:
                times[preset].append(time.perf_counter() - start)
    return {p: {"median_s": statistics.median(t), "times_s": t} for p, t in times.items()}


def encoder_time_per_slice(
    model_name: str = "litemedsam", repeats: int = 5, device: str | torch.device = "cpu", amp: bool = False
) -> dict[str, float]:
    """Median seconds of one image-encoder forward on a single slice, under ``inference_mode``."""
    device = torch.device(device)
    model = build_model(model_name).to(device).eval()
    image = torch.rand(1, 3, model.img_size, model.img_size, device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            model.encode(image)
            _sync(device)
            if i:
                times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def volume_time(
    image: str, label: str, classes: list[int] | None = None, model_name: str = "litemedsam", device: str = "cpu",
    repeats: int = 2,
) -> dict:
    """Seconds to segment one volume end to end (read, prompts from the ``classes`` of ``label``, infer, write
    NIfTI) against the encoder alone over the same slices, in the same run; the best of ``repeats`` of each."""
    import tempfile

    from ..inferers import Case, Preprocess, SliceWiseInferer, load_volume, prepare_volume, prompts_from_label
    from ..inferers.segment import segment_case

    inferer = SliceWiseInferer(build_model(model_name), device=device)
    volume, geometry = prepare_volume(load_volume(image), Preprocess())
    gt = geometry.to_sliced(load_volume(label)[0].numpy().round().astype(int))
    if classes is not None:
        gt = np.where(np.isin(gt, classes), gt, 0)
    slices = sorted({z for per in prompts_from_label(gt).values() for z in per})
    whole, encoder = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            segment_case(inferer, Case(image=image, label=label, classes=classes), f"{tmp}/{i}.nii.gz", score=False)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in inferer.encode(volume, slices):
                pass
            _sync(torch.device(device))
            encoder.append(time.perf_counter() - start)
    return {"slices": len(slices), "volume_s": round(min(whole), 3), "encoder_only_s": round(min(encoder), 3),
            "overhead_outside_encoder": round(min(whole) / min(encoder) - 1, 4)}


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak resident set on the CPU."""
    return _peak_memory_mib(torch.device(device))


def machine_summary(device: str | torch.device = "cpu") -> dict[str, str | int]:
    device = torch.device(device)
    info: dict[str, str | int] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
