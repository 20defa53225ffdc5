"""The encoder's runtimes on a CPU with native bf16, against fp32 eager, in one interleaved run.

``backends.py`` compared the runtimes in fp32 on an AVX2 machine, where bf16 is emulated. On a CPU with AVX-512
BF16 or AMX the question is another: is OpenVINO's bf16 (the plugin's default there) faster than torch's bf16
autocast, which ``--precision bf16`` uses, and by how much against fp32 eager? One process; every round calls
each runtime once on the same slice; ratios of the medians, each runtime's embedding against fp32 eager's::

    python docs/benchmarks/cpu_speed/backends_bf16.py -o runs/cpu_speed/backends_bf16.json --repeats 9
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from monai_cbo.models import build_segmenter
from monai_cbo.timing.encoder_backends import (
    EncoderBackend,
    _round_robin,
    eager_encoder,
    embedding_difference,
    onnxruntime_encoder,
    openvino_encoder,
)
from monai_cbo.utils import cpu_native_bf16, keep_freed_memory


def eager_bf16(model) -> EncoderBackend:
    """``--precision bf16``'s encoder: eager under ``torch.autocast("cpu", torch.bfloat16)``."""
    model = eager_encoder(model)

    def run(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images).float()

    return EncoderBackend("eager_bf16", run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    keep_freed_memory()
    model = build_segmenter("litemedsam", preset="freeze").eval()
    s = model.img_size
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(1))
    builders = {
        "eager_bf16": lambda: eager_bf16(model),
        "openvino_f32": lambda: openvino_encoder(model, precision="f32"),
        "openvino_bf16": lambda: openvino_encoder(model, precision="bf16"),
        "onnxruntime_f32": lambda: onnxruntime_encoder(model),
    }
    built = {"eager": eager_encoder(model)}
    result: dict = {}
    for name, build in builders.items():
        try:
            built[name] = build()
        except ImportError as err:
            result[name] = {"skipped": str(err)}
    reference = built["eager"](image)
    for name, backend in built.items():
        start = time.perf_counter()
        out = backend(image)
        result[name] = {"first_call_s": round(time.perf_counter() - start, 3), "info": backend.info}
        result[name].update({k: float(f"{v:.3g}") for k, v in embedding_difference(out, reference).items()})
    times = _round_robin({name: (lambda b=b: b(image)) for name, b in built.items()}, args.repeats)
    eager = statistics.median(times["eager"])
    for name, t in times.items():
        result[name].update(
            median_s=round(statistics.median(t), 4),
            speedup=round(eager / statistics.median(t), 3),
            round_speedups=[round(e / x, 3) for e, x in zip(times["eager"], t, strict=True)],
        )
    report = {
        "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_native_bf16(),
                    "torch": torch.__version__},
        "repeats": args.repeats,
        "backends": result,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in result.items():
        print(f"{name:16s} {r.get('median_s', '-')!s:>8} s  x{r.get('speedup', '-')}  rel_err {r.get('rel_err', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
