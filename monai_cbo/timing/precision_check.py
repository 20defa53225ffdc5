"""``monai-cbo speed --precision-check``: what bf16 buys on this CPU, and what it changes.

Interleaved in one process (fp32, bf16, fp32, bf16, ...; the ratio of the medians, so a busy machine slows both
sides alike), each with the largest output difference:

* ``encoder``: one slice through the image encoder, fp32 against bf16 autocast (``--precision bf16``);
* ``decoder``: one box through the prompt encoder and mask decoder, from the same fp32 embedding;
* ``train_step``: one ``lora_cbo`` training step (the trainer's, :func:`~monai_cbo.training.train_step`) in fp32
  against bf16 (:class:`~monai_cbo.training.AutocastForward`), from the same weights each time.

It says first whether the CPU has native bf16 (:func:`~monai_cbo.precision.cpu_native_bf16`): without it the
figures measure torch's emulation (about 20x slower), not what a capable CPU does. What the masks lose is
measured separately, with the prompts bench's ``--precision`` on the validation volumes (docs/benchmarks/
cpu_speed.md).
"""

from __future__ import annotations

import torch

from ..models import build_segmenter
from ..precision import Precision, cpu_native_bf16
from ..training import build_optimizer, build_trainer, train_step
from ..utils import machine_summary
from .speedups import _interleaved

__all__ = ["precision_check", "train_step_runner"]


def precision_check(model_name: str = "litemedsam", repeats: int = 5, batch: int = 2, seed: int = 0) -> dict:
    """The three comparisons of the module docstring on the CPU; returns ``{"native_bf16", "machine", name:
    {before_s, after_s, speedup, max_abs_diff}}`` (before: fp32, after: bf16)."""
    import warnings

    g = torch.Generator().manual_seed(seed)
    model = build_segmenter(model_name, preset="freeze").eval()
    s = model.img_size
    x = torch.rand(1, 3, s, s, generator=g)
    box = torch.tensor([[[s * 0.25, s * 0.25, s * 0.6, s * 0.7]]])
    fp32 = Precision("fp32", "cpu", None, None)
    bf16 = Precision("bf16", "cpu", torch.bfloat16, torch.bfloat16)

    def encode(p: Precision):
        def run() -> torch.Tensor:
            with torch.inference_mode(), p.encoder_autocast():
                return model.encode(x).float()

        return run

    with torch.inference_mode():
        embedding = model.encode(x)

    def decode(p: Precision):
        def run() -> torch.Tensor:
            with torch.inference_mode(), p.decoder_autocast():
                return model.decode(embedding, boxes=box).masks.float()

        return run

    result: dict = {"native_bf16": cpu_native_bf16(), "machine": machine_summary("cpu")}
    result["encoder"] = _interleaved(encode(fp32), encode(bf16), repeats)
    result["decoder"] = _interleaved(decode(fp32), decode(bf16), repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulation warning: said once above, as native_bf16
        result["train_step"] = _interleaved(*_train_steps(model_name, batch, seed), repeats)
    return result


def _train_steps(model_name: str, batch: int, seed: int):
    """An fp32 and a bf16 ``lora_cbo`` training step on the same weights and data (reset before each step)."""
    return (
        train_step_runner(model_name, "lora_cbo", "fp32", batch, seed),
        train_step_runner(model_name, "lora_cbo", "bf16", batch, seed),
    )


def train_step_runner(model_name: str, preset: str, precision: str, batch: int = 2, seed: int = 0):
    """One trainer step of a ``preset`` model built with ``seed`` in ``precision``, on ``batch`` seeded random
    slices with one box: a callable returning the step's loss, the trained weights and optimizer reset before
    each call so that every call times the same step. Runners of equal arguments but ``precision`` start from
    the same weights and data."""
    g = torch.Generator().manual_seed(seed)
    model = build_segmenter(model_name, preset=preset, seed=seed)
    s = model.img_size
    target = torch.zeros(batch, 1, s, s)
    target[:, :, s // 4 : int(s * 0.7), s // 4 : int(s * 0.6)] = 1
    data = {
        "image": torch.rand(batch, 3, s, s, generator=g),
        "label": target,
        "boxes": torch.tensor([[s * 0.25, s * 0.25, s * 0.6, s * 0.7]]).repeat(batch, 1, 1),
    }
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = build_trainer(model, build_optimizer(model, 1e-4), [], precision=precision)

    def run() -> torch.Tensor:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])
        trainer.optimizer = build_optimizer(model, 1e-4)
        torch.manual_seed(seed)
        return train_step(trainer, data)["loss"].detach()

    return run
