"""The image encoder channels-last on the CPU against contiguous, fp32 and bf16, inference and training.

``SamSegmenter`` keeps the encoder's convolution weights, and the images it encodes, channels-last on the CPU
(``monai_cbo.networks.segmenter.CPU_CHANNELS_LAST``). This times LiteMedSAM both ways in one process, every round
calling each variant once: the encoder on one 256² slice (fp32; bf16 autocast, ``--precision bf16``) and one
``adapter_cbo`` training step on 2 slices (the trainer's, fp32 and bf16), the weights reset before each step.
Ratios of the medians, contiguous over channels-last, and each output's largest difference between the two::

    python docs/benchmarks/cpu_speed/channels_last.py -o runs/cpu_speed/channels_last.json --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import monai_cbo.networks.segmenter as segmenter
from monai_cbo.models import build_segmenter
from monai_cbo.timing.precision_check import train_step_runner
from monai_cbo.utils import keep_freed_memory, machine_summary


def _in_format(channels_last: bool, build):
    """``build()`` with the encoder's CPU layout set as asked, and what it returns wrapped to set it again on
    every call (the switch is read when a model is built and at each encode)."""

    def set_format(fn):
        def run():
            segmenter.CPU_CHANNELS_LAST = channels_last
            try:
                return fn()
            finally:
                segmenter.CPU_CHANNELS_LAST = True

        return run

    run = set_format(build)()
    return set_format(run)


def _encoder(channels_last: bool, bf16: bool, image: torch.Tensor):
    def build():
        model = build_segmenter("litemedsam", preset="freeze").eval()

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model.encode(image).float()

        return run

    return _in_format(channels_last, build)


def _train_step(channels_last: bool, precision: str):
    return _in_format(channels_last, lambda: train_step_runner("litemedsam", "adapter_cbo", precision, batch=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    keep_freed_memory()  # as the command line does: without it every pass page-faults its activations in again
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    variants = {}
    for what, make in (
        ("encoder fp32", lambda cl: _encoder(cl, False, image)),
        ("encoder bf16", lambda cl: _encoder(cl, True, image)),
        ("training step fp32", lambda cl: _train_step(cl, "fp32")),
        ("training step bf16", lambda cl: _train_step(cl, "bf16")),
    ):
        variants[(what, "contiguous")] = make(False)
        variants[(what, "channels-last")] = make(True)
    outputs = {key: run() for key, run in variants.items()}  # warm-up
    times: dict = {key: [] for key in variants}
    for _ in range(args.repeats):
        for key, run in variants.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    result: dict = {"repeats": args.repeats, "machine": machine_summary("cpu")}
    for what in dict.fromkeys(w for w, _ in variants):
        before, after = (statistics.median(times[(what, f)]) for f in ("contiguous", "channels-last"))
        diff = float((outputs[(what, "contiguous")] - outputs[(what, "channels-last")]).abs().max())
        result[what] = {"contiguous_s": round(before, 4), "channels_last_s": round(after, 4),
                        "speedup": round(before / after, 3), "max_abs_diff": diff}  # fmt: skip
        print(f"{what:20s} contiguous {before:.3f} s  channels-last {after:.3f} s  x{before / after:.2f}  "
              f"max diff {diff:.2g}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
