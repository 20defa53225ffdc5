"""Before/after timings of the CPU speed-ups the bench uses or considered, each with an output check.

Every comparison runs its two variants interleaved in one process (before, after, before, after, ...) and
reports the ratio of the medians, so a busy machine shifts both sides alike. ``max_abs_diff`` compares the
outputs (loss, embeddings) of the two variants: 0.0 means bitwise identical.

* ``frozen_front_cache``: a ``lora_cbo`` training step (the trainer's) from cached TinyViT patch-embedding +
  conv-stage features (the bench's :func:`~monai_cbo.networks.feature_cache`) against encoding from the image.
* ``embedding_cache``: a ``decoder_only`` step from a cached image embedding against encoding the image.
* ``inference_mode``: encoding one slice under ``torch.inference_mode`` against ``torch.no_grad``.
* ``channels_last``: the encoder in channels-last memory format against the default, inference.
* ``torch_compile``: ``torch.compile`` of the encoder against eager, inference, after a warm-up; the
  compile time is reported separately.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from monai.engines import SupervisedTrainer

from ..models import build_segmenter
from ..networks import feature_cache
from ..training import build_optimizer, build_trainer, train_step
from .encoder_backends import _round_robin

__all__ = ["measure_speedups"]


def _interleaved(before: Callable[[], object], after: Callable[[], object], repeats: int) -> dict:
    out_b, out_a = before(), after()  # warm-up, and the outputs to compare
    times = _round_robin({"before": before, "after": after}, repeats)
    med_b, med_a = statistics.median(times["before"]), statistics.median(times["after"])
    diff = float((torch.as_tensor(out_b).float() - torch.as_tensor(out_a).float()).abs().max())
    return {
        "before_s": round(med_b, 4),
        "after_s": round(med_a, 4),
        "speedup": round(med_b / med_a, 3),
        "max_abs_diff": diff,
    }


def _train_step_pair(model_name: str, preset: str, batch: int, seed: int) -> tuple[Callable, Callable]:
    """The training step (:func:`~monai_cbo.training.train_step`) from the image, and the same step with the frozen
    front from a :func:`~monai_cbo.networks.feature_cache`; same weights, same data, a fresh optimizer each time."""
    g = torch.Generator().manual_seed(seed)
    model = build_segmenter(model_name, preset=preset, seed=seed)
    s = model.img_size
    images = torch.rand(batch, 3, s, s, generator=g)
    boxes = torch.tensor([[s * 0.25, s * 0.25, s * 0.6, s * 0.7]]).repeat(batch, 1, 1)
    target = torch.zeros(batch, 1, s, s)
    target[:, :, s // 4 : int(s * 0.7), s // 4 : int(s * 0.6)] = 1
    data = {"image": images, "label": target, "boxes": boxes}
    keyed = {**data, "slice_keys": [("speedups", i) for i in range(batch)]}
    plain = build_trainer(model, build_optimizer(model, 1e-4), [])
    cached = build_trainer(model, build_optimizer(model, 1e-4), [], feature_cache=feature_cache())
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def step(trainer: SupervisedTrainer, batch_data: dict) -> torch.Tensor:
        with torch.no_grad():  # every step starts from the same weights, so both variants do the same work
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])
        trainer.optimizer = build_optimizer(model, 1e-4)
        return train_step(trainer, batch_data)["loss"].detach()

    return (lambda: step(plain, data)), (lambda: step(cached, keyed))  # the first "after" call fills the cache


def measure_speedups(
    model_name: str = "litemedsam", repeats: int = 5, batch: int = 2, compile_encoder: bool = True
) -> dict:
    """Run every comparison (see the module docstring) on the CPU; returns ``{name: figures}``."""
    results: dict[str, dict] = {}
    before, after = _train_step_pair(model_name, "lora_cbo", batch, 0)
    results["frozen_front_cache"] = _interleaved(before, after, repeats)
    before, after = _train_step_pair(model_name, "decoder_only", batch, 0)
    results["embedding_cache"] = _interleaved(before, after, repeats)

    model = build_segmenter(model_name, preset="freeze").eval()
    x = torch.rand(1, 3, model.img_size, model.img_size, generator=torch.Generator().manual_seed(1))

    def encode_with(context: Callable, net: Callable = model.encode, inp: torch.Tensor = x) -> Callable:
        def run() -> torch.Tensor:
            with context():
                return net(inp).clone()

        return run

    results["inference_mode"] = _interleaved(encode_with(torch.no_grad), encode_with(torch.inference_mode), repeats)

    cl_model = build_segmenter(model_name, preset="freeze").eval().to(memory_format=torch.channels_last)
    results["channels_last"] = _interleaved(
        encode_with(torch.inference_mode),
        encode_with(torch.inference_mode, cl_model.encode, x.contiguous(memory_format=torch.channels_last)),
        repeats,
    )
    if compile_encoder:
        compiled = build_segmenter(model_name, preset="freeze").eval()
        compiled.image_encoder = torch.compile(compiled.image_encoder)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled.encode(x)
        compile_s = time.perf_counter() - start
        results["torch_compile"] = {
            **_interleaved(
                encode_with(torch.inference_mode), encode_with(torch.inference_mode, compiled.encode), repeats
            ),
            "compile_s": round(compile_s, 1),
        }
    return results
