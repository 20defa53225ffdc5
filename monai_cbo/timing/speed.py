"""Speed and memory figures: training step time per preset, encoder time per slice, peak memory.

Timings on a shared machine are noisy, so presets are timed *interleaved* (one step of each in turn,
repeated) and compared by the ratio of their medians; absolute seconds are reported beside them.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from ..losses import PromptDiceBCELoss
from ..models import build_segmenter
from ..networks import build_model
from ..peft import count_parameters
from ..training import build_optimizer, build_trainer, train_step, trainer_precision
from ..utils import machine_summary

__all__ = [
    "DEFAULT_SPEED_PRESETS",
    "encoder_time_per_slice",
    "machine_summary",
    "peak_memory_mib",
    "training_step_times",
    "volume_time",
]

#: presets ``monai-cbo speed`` times by default: the four whose cost differs inside the encoder
DEFAULT_SPEED_PRESETS = ("lora", "lora_cbo", "adapter", "adapter_cbo")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _batch(size: int, batch: int, prompts: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """A random training batch as the trainer takes it: ``image`` [B, 3, S, S], ``boxes`` [B, P, 4] and
    ``label`` [B, P, S, S] (each box filled)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    lo = torch.randint(0, size // 2, (batch, prompts, 2), generator=g).float()
    hi = lo + torch.randint(size // 8, size // 2, (batch, prompts, 2), generator=g).float()
    boxes = torch.cat([lo, hi.clamp(max=size - 1)], dim=-1)
    label = torch.zeros(batch, prompts, size, size)
    for b in range(batch):
        for p in range(prompts):
            x0, y0, x1, y1 = boxes[b, p].long().tolist()
            label[b, p, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return {"image": image.to(device), "boxes": boxes.to(device), "label": label.to(device)}


def training_step_times(
    model_name: str = "litemedsam",
    presets: Sequence[str] = DEFAULT_SPEED_PRESETS,
    batch: int = 1,
    prompts: int = 2,
    steps: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    amp: bool = False,
    seed: int = 0,
    lr: float = 1e-4,
) -> dict[str, dict]:
    """Median wall time of one training step per preset: the step the bundles and ``monai-cbo bench`` train
    with (:func:`~monai_cbo.training.train_step` of :func:`~monai_cbo.training.build_trainer`: Dice + BCE loss,
    backward, the optimizer of :func:`~monai_cbo.training.build_optimizer`). A preset that trains nothing
    (``freeze``) has no step: its forward pass and loss are timed instead.

    All presets are built first (:func:`~monai_cbo.models.build_segmenter`, seeded), then stepped in turn
    ``steps`` times after ``warmup`` rounds, so slow phases of the machine hit every preset alike. ``amp``
    applies on CUDA only, as in training. Returns ``{preset: {"median_s", "times_s", "precision"}}`` (the number
    format the step ran in: :func:`~monai_cbo.training.trainer_precision`).
    """
    device = torch.device(device)
    models, steppers, formats = {}, {}, {}
    for preset in presets:
        model = build_segmenter(model_name, preset=preset, seed=seed).to(device)
        models[preset] = model
        if count_parameters(model)["total_trainable"]:
            trainer = build_trainer(model, build_optimizer(model, lr), [], device=device, amp=amp)
            steppers[preset] = lambda b, t=trainer: train_step(t, b)
            formats[preset] = trainer_precision(trainer)
        else:
            loss_fn = PromptDiceBCELoss()
            steppers[preset] = lambda b, m=model, f=loss_fn: _forward_and_loss(m, f, b, amp)
            formats[preset] = "fp16" if amp and device.type == "cuda" else "fp32"  # _forward_and_loss's autocast
    data = _batch(next(iter(models.values())).img_size, batch, prompts, device, seed)
    times: dict[str, list[float]] = {p: [] for p in presets}
    for round_ in range(warmup + steps):
        for preset in presets:
            _sync(device)
            start = time.perf_counter()
            steppers[preset](data)
            _sync(device)
            if round_ >= warmup:
                times[preset].append(time.perf_counter() - start)
    return {p: {"median_s": statistics.median(t), "times_s": t, "precision": formats[p]} for p, t in times.items()}


def _forward_and_loss(model: torch.nn.Module, loss_fn: PromptDiceBCELoss, data: dict, amp: bool) -> torch.Tensor:
    image = data["image"]
    with torch.autocast(image.device.type, enabled=amp and image.device.type == "cuda"):
        return loss_fn(model(image, boxes=data["boxes"]), data["label"])


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
    image: str,
    label: str,
    classes: list[int] | None = None,
    model_name: str = "litemedsam",
    device: str = "cpu",
    repeats: int = 2,
) -> dict:
    """Seconds to segment one volume end to end (read, prompts from the ``classes`` of ``label``, infer, write
    NIfTI) against the encoder alone over the same slices, in the same run; the best of ``repeats`` of each."""
    import tempfile

    from ..inferers import (
        Case,
        Preprocess,
        SliceWiseInferer,
        check_label,
        load_volume,
        prepare_volume,
        prompts_from_label,
        segment_case,
    )

    inferer = SliceWiseInferer(build_model(model_name), device=device)
    loaded = load_volume(image)
    volume, geometry = prepare_volume(loaded, Preprocess())
    gt, _ = check_label(load_volume(label), loaded, classes)  # the checks of monai-cbo segment --label
    slices = sorted({z for per in prompts_from_label(geometry.to_sliced(gt)).values() for z in per})
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
    return {
        "slices": len(slices),
        "volume_s": round(min(whole), 3),
        "encoder_only_s": round(min(encoder), 3),
        "overhead_outside_encoder": round(min(whole) / min(encoder) - 1, 4),
    }


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak resident set on the CPU."""
    return _peak_memory_mib(torch.device(device))
