"""Encoder backends on the CPU: timings and embedding differences, then Dice on real volumes.

Writes ``backends.json`` (and prints it) into the output folder. From the project root::

    .venv/bin/python docs/benchmarks/cpu_speed/backends.py -o /tmp/cpu_speed/backends --threads 1 2 --repeats 7
    .venv/bin/python docs/benchmarks/cpu_speed/backends.py -o /tmp/cpu_speed/dice --dice onnxruntime openvino \
        --no-timing --threads 1

``--threads N ...``: one timing run (:func:`~monai_cbo.timing.encoder_backends.measure_encoder_backends`, all
backends interleaved with eager, or those of ``--backends``) per torch thread count. ``--load-times``: the
export / conversion time against loading the saved file. ``--dice B ...``: segment the hippocampus cases with
eager and with each backend ``B`` (zero-shot LiteMedSAM, per-slice boxes and a 3D box from the label, as
``monai-cbo prompts-bench`` scores them), and compare Dice. Data: ``../shared/data`` (``--data-root``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from monai_cbo.bench.protocols import SuiteCase, _load, _score
from monai_cbo.inferers import PropagationConfig, SliceWiseInferer
from monai_cbo.models import build_segmenter
from monai_cbo.timing.encoder_backends import build_encoder, measure_encoder_backends, openvino_encoder, using_encoder
from monai_cbo.utils import keep_freed_memory, machine_summary

CASES = ("hippocampus_003", "hippocampus_004", "hippocampus_011")
PROTOCOLS = ("per_slice", "box3d")
CONFIG = PropagationConfig()  # the defaults, as the prompts bench uses them


def versions() -> dict:
    out = {"torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            out[name] = __import__(name).__version__.split("-")[0]
        except ImportError:
            out[name] = None
    return out


def dice_rows(backend: str, cases: list[SuiteCase]) -> tuple[list[dict], float]:
    """Score every case with ``backend``'s encoder (``eager`` included); returns the rows and the encode time."""
    model = build_segmenter("litemedsam", preset="freeze").eval()
    encoder = build_encoder(backend, model)
    spent = [0.0]

    def timed(images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = encoder(images)
        spent[0] += time.perf_counter() - start
        return out

    rows = []
    with using_encoder(model, timed):
        inferer = SliceWiseInferer(model)
        for case in cases:
            rows += [{**r, "backend": backend} for r in _score(inferer, _load(case, None, backend), PROTOCOLS, CONFIG)]
    return rows, spent[0]


def load_times(folder: Path) -> dict:
    """Seconds to export / convert LiteMedSAM's encoder, save it, and load the saved file again (what a cache on
    disk would cost per process), at torch's thread count."""
    import onnxruntime as ort
    import openvino as ov

    from monai_cbo.timing.encoder_backends import _Encode, _example

    model = build_segmenter("litemedsam", preset="freeze").eval()
    x, threads, out = _example(model), torch.get_num_threads(), {}
    start = time.perf_counter()
    with torch.no_grad():
        converted = ov.convert_model(_Encode(model), example_input=x, input=[tuple(x.shape)])
    out["openvino_convert_s"] = time.perf_counter() - start
    ov.save_model(converted, str(folder / "encoder.xml"))
    start = time.perf_counter()
    core = ov.Core()
    core.compile_model(core.read_model(str(folder / "encoder.xml")), "CPU", {"INFERENCE_NUM_THREADS": threads})
    out["openvino_load_saved_s"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(_Encode(model), (x,), str(folder / "encoder.onnx"), dynamo=False, opset_version=17)
    out["onnx_export_s"] = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    start = time.perf_counter()
    ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    out["onnxruntime_load_saved_s"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--backends", nargs="+", default=None, help="backends to time (default: all)")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--dice", nargs="*", default=[], help="backends to segment the hippocampus cases with")
    p.add_argument("--load-times", action="store_true", help="time export / conversion against loading it saved")
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    args = p.parse_args()
    applied = keep_freed_memory()  # as the command line does: the eager baseline is the CLI's
    args.output.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_summary("cpu"), "versions": versions(), "malloc_tuning": applied}
    if not args.no_timing:
        result["timing"] = {}
        for n in args.threads:
            start = time.perf_counter()
            figures = measure_encoder_backends("litemedsam", args.repeats, args.backends, threads=n)
            result["timing"][str(n)] = {"figures": figures, "wall_s": round(time.perf_counter() - start)}
            print(json.dumps({n: figures}, indent=1), flush=True)
        default = openvino_encoder(build_segmenter("litemedsam", preset="freeze").eval(), precision=None)
        result["openvino_default_precision"] = default.info["precision"]
    if args.load_times:
        torch.set_num_threads(args.threads[0])
        result["load_times"] = load_times(args.output)
        print(json.dumps(result["load_times"]), flush=True)
    if args.dice:
        torch.set_num_threads(args.threads[0])
        root = args.data_root / "Task04_Hippocampus"
        cases = [
            SuiteCase(
                "hippocampus",
                name,
                str(root / "imagesTr" / f"{name}.nii.gz"),
                str(root / "labelsTr" / f"{name}.nii.gz"),
                "tune",
                "mri",
                {"anterior": [1], "posterior": [2]},
            )
            for name in CASES
        ]
        rows, encode_s = [], {}
        for backend in ["eager", *args.dice]:
            r, encode_s[backend] = dice_rows(backend, cases)
            rows += r
            print(backend, f"encode {encode_s[backend]:.1f} s", flush=True)
        eager = {(r["case"], r["target"], r["protocol"]): r["dice"] for r in rows if r["backend"] == "eager"}
        summary = {}
        for backend in ["eager", *args.dice]:
            mine = [r for r in rows if r["backend"] == backend]
            summary[backend] = {"encode_s": round(encode_s[backend], 1)}
            for protocol in PROTOCOLS:
                sel = [r for r in mine if r["protocol"] == protocol]
                deltas = [r["dice"] - eager[(r["case"], r["target"], protocol)] for r in sel]
                summary[backend][protocol] = {
                    "n": len(sel),
                    "mean_dice": float(np.mean([r["dice"] for r in sel])),
                    "mean_delta": float(np.mean(deltas)),
                    "max_abs_delta": float(np.max(np.abs(deltas))),
                }
        result["dice"] = {"cases": list(CASES), "protocols": list(PROTOCOLS), "summary": summary, "rows": rows}
        print(json.dumps(summary, indent=1), flush=True)
    (args.output / "backends.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
