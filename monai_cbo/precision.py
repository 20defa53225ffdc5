"""Which number format the model computes in: one option, ``--precision``, for inference and training.

``auto`` (the default) keeps what was measured to be safe:

* on CUDA, fp16 autocast of the whole model (as ``amp`` always did);
* on the CPU, fp32 for inference, unless :data:`CPU_AUTO_BF16` is switched on by a measurement (below);
* for training on a CPU with native bf16, the forward pass in bf16 (:data:`CPU_AUTO_BF16_TRAINING`): with
  ``monai-cbo adapt``'s time budget it trains about twice the steps, and its adapters scored as well or better
  on unseen volumes (docs/benchmarks/cpu_speed.md); fp32 on a CPU without.

``bf16`` computes the image encoder (and, in training, the forward pass) under bf16 autocast: on a CPU with
native bf16 dot products (AVX-512 BF16 or AMX, which oneDNN uses) the encoder runs about 2.3x faster
(issue 31's figures, measured on such a CPU); on a CPU without them (AVX2 only) bf16 is *emulated* and about
20x slower than fp32, so ``auto`` never picks it there and asking for it warns. The mask decoder stays in fp32
on the CPU: it is a small part of the time, and a whole-model bf16 run cost an adapter 0.006 Dice
(docs/benchmarks/cpu_speed.md). ``fp32`` turns every autocast off, CUDA included. ``fp16`` is CUDA's.

Why ``auto`` is not bf16 on a capable CPU: the rule (issue 31) is that the default changes only where the Dice
on the validation volumes of every kind stays within 0.005 of fp32. Measured on a CPU with native bf16
(docs/benchmarks/cpu_speed.md, 2026-12-06): the encoder 1.87-2.00x faster, but 4 of 7 kinds outside 0.005 on
the 20 validation cases (a small change of one slice's mask moves a propagation's stop; the kinds with one or two
cases differ most), so :data:`CPU_AUTO_BF16` stays off.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from .utils import check_option, cpu_native_bf16

__all__ = ["CPU_AUTO_BF16", "CPU_AUTO_BF16_TRAINING", "PRECISIONS", "Precision", "cpu_native_bf16", "resolve_precision"]

#: the values of ``--precision``
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: whether ``auto`` picks bf16 for the encoder on a CPU with native bf16 (see the module docstring)
CPU_AUTO_BF16 = False
#: whether ``auto`` trains in bf16 (the forward pass under bf16 autocast, fp32 weights and loss) on a CPU with
#: native bf16: measured with ``monai-cbo adapt`` (docs/benchmarks/cpu_speed.md), the same 10 minutes train
#: about twice the steps, and the adapters score as well or better on unseen volumes
CPU_AUTO_BF16_TRAINING = True

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved ``--precision``: the autocast (or none) for the encoder and for the rest of the model.

    Attributes:
        name: what was asked for (``auto``, ``fp32``, ``bf16``, ``fp16``).
        device_type: ``cpu`` or ``cuda``.
        encoder: the encoder's autocast dtype; None: fp32.
        decoder: the prompt encoder / mask decoder's autocast dtype; None: fp32.
    """

    name: str
    device_type: str
    encoder: torch.dtype | None
    decoder: torch.dtype | None

    @property
    def label(self) -> str:
        """What runs, in words (``fp32``, ``bf16 encoder``, ``fp16``), for logs and reports."""
        short = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        if self.encoder == self.decoder:
            return short[self.encoder]
        return f"{short[self.encoder]} encoder, {short[self.decoder]} decoder"

    @property
    def reduced(self) -> bool:
        """Whether any part runs below fp32."""
        return self.encoder is not None or self.decoder is not None

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        if dtype is None:  # also switches off an autocast a caller may have around us
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=dtype)

    def encoder_autocast(self) -> contextlib.AbstractContextManager:
        """The context to run the image encoder in."""
        return self._autocast(self.encoder)

    def decoder_autocast(self) -> contextlib.AbstractContextManager:
        """The context to run the prompt encoder and mask decoder in."""
        return self._autocast(self.decoder)


def resolve_precision(name: str, device: str | torch.device, training: bool = False) -> Precision:
    """Turn ``--precision NAME`` into what runs on ``device`` (see the module docstring); ``training``: for a
    training step, whose ``auto`` on a CPU with native bf16 follows :data:`CPU_AUTO_BF16_TRAINING` (the whole
    forward pass in bf16) instead of :data:`CPU_AUTO_BF16`.

    Raises:
        ValueError: an unknown name, or ``fp16`` on the CPU.
    """
    check_option("precision", name, PRECISIONS)
    device_type = torch.device(device).type
    cuda = device_type == "cuda"
    if name == "fp32":
        return Precision(name, device_type, None, None)
    if name == "fp16":
        if not cuda:
            raise ValueError("--precision fp16 is for CUDA GPUs; on the CPU use bf16 (or fp32)")
        return Precision(name, device_type, torch.float16, torch.float16)
    if name == "auto":
        if cuda:
            return Precision(name, device_type, torch.float16, torch.float16)
        policy = CPU_AUTO_BF16_TRAINING if training else CPU_AUTO_BF16
        if policy and device_type == "cpu" and cpu_native_bf16():
            return Precision(name, device_type, torch.bfloat16, torch.bfloat16 if training else None)
        return Precision(name, device_type, None, None)
    # bf16
    if device_type == "cpu" and not cpu_native_bf16():
        warnings.warn(
            "--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so torch emulates it, about 20x "
            "slower than fp32; use it here only to check numerics (--precision auto or fp32 for speed)",
            stacklevel=2,
        )
    return Precision(name, device_type, torch.bfloat16, torch.bfloat16 if cuda else None)
