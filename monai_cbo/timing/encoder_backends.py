"""Other ways to run a segmenter's image encoder on the CPU, each timed against fp32 eager PyTorch.

Each ``*_encoder(model)`` builds an :class:`EncoderBackend`: a callable taking images ``[N, 3, S, S]`` in [0, 1]
(what :meth:`~monai_cbo.networks.SamSegmenter.encode` takes) and returning the embedding ``[N, C, h, w]`` as a
float32 CPU tensor, from a frozen copy of the model (the model passed in is left as it is). The backends:

* ``eager``: :meth:`~monai_cbo.networks.SamSegmenter.encode` under ``torch.inference_mode``, fp32. The reference.
* ``channels_last``: the same with the model and the input in channels-last memory format.
* ``torch_compile``: ``torch.compile`` of the image encoder (Inductor, C++ kernels); the first call compiles.
* ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of the encoder's ``nn.Linear`` layers: int8
  weights, activations quantised per batch at run time; convolutions, norms and attention stay fp32. Lossy.
* ``onnxruntime``: the model's ``encode`` exported to ONNX (``torch.onnx.export``, the TorchScript-based
  exporter, ``dynamo=False``: the dynamo one needs ``onnxscript``), run by ONNX Runtime's CPU execution provider
  with graph optimisation ``ORT_ENABLE_ALL`` and ``intra_op_num_threads`` = torch's thread count. Needs
  ``pip install "monai-cbo[onnx]"``.
* ``openvino``: the model's ``encode`` converted by ``openvino.convert_model`` (from the torch module; no ONNX
  needed), compiled for the ``CPU`` plugin with ``INFERENCE_NUM_THREADS`` = torch's thread count and the
  ``INFERENCE_PRECISION_HINT`` given (``"f32"`` by default; ``None`` leaves the plugin's default, which is bf16
  or f16 on CPUs that have them and f32 elsewhere; :attr:`EncoderBackend.info` says which it used). Needs
  ``pip install "monai-cbo[openvino]"``.

The exported / converted graphs take one image at a time (``[1, 3, S, S]``): TinyViT's forward reads the batch
size as a Python int, which tracing bakes in, and OpenVINO then returns a batch of one for a batch of two
without an error. Both backends therefore fix the input shape and encode a batch image by image (the CPU
inferer encodes one slice at a time anyway).

:func:`measure_encoder_backends` times them all in one process, interleaved, and compares their embeddings with
eager's; a backend whose package is missing is reported as skipped, with the reason. The figures on one machine
are in ``docs/benchmarks/cpu_speed/backends.md``.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..networks.runtime import convert_encode, frozen_copy, frozen_encode

__all__ = [
    "BACKENDS",
    "EncoderBackend",
    "build_encoder",
    "channels_last_encoder",
    "compiled_encoder",
    "eager_encoder",
    "embedding_difference",
    "int8_dynamic_encoder",
    "measure_encoder_backends",
    "onnxruntime_encoder",
    "openvino_encoder",
    "using_encoder",
]

BACKENDS = ("eager", "channels_last", "torch_compile", "int8_dynamic", "onnxruntime", "openvino")


@dataclass
class EncoderBackend:
    """An image encoder: ``backend(images [N, 3, S, S]) -> embedding [N, C, h, w]`` (float32, CPU).

    ``info``: what the backend was built with (threads, precision, the time the export or conversion took)."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    info: dict = field(default_factory=dict)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


def _missing(package: str, extra: str, err: ImportError) -> ImportError:
    return ImportError(
        f"the {package!r} encoder backend needs the package {package!r}, which is not installed ({err}); "
        f'install it with: pip install "monai-cbo[{extra}]"'
    )


def _one_by_one(run_one: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu().contiguous()
        return torch.cat([run_one(images[i : i + 1]) for i in range(images.shape[0])])

    return run


def eager_encoder(model: nn.Module) -> EncoderBackend:
    """fp32 eager PyTorch under ``torch.inference_mode``: the reference the others are compared with."""
    model = frozen_copy(model)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode(images).float()

    return EncoderBackend("eager", run)


def channels_last_encoder(model: nn.Module) -> EncoderBackend:
    """Eager with the model's weights and the input in channels-last memory format."""
    model = frozen_copy(model).to(memory_format=torch.channels_last)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode(images.contiguous(memory_format=torch.channels_last)).float().contiguous()

    return EncoderBackend("channels_last", run)


def compiled_encoder(model: nn.Module) -> EncoderBackend:
    """``torch.compile`` of the image encoder; compiles on the first call (tens of seconds on a laptop CPU)."""
    model = frozen_copy(model)
    model.image_encoder = torch.compile(model.image_encoder)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode(images).float()

    return EncoderBackend("torch_compile", run)


def int8_dynamic_encoder(model: nn.Module) -> EncoderBackend:
    """int8 dynamic quantisation of the image encoder's ``nn.Linear`` layers (weights int8, activations
    quantised per call); the rest stays fp32."""
    from torch.ao.quantization import quantize_dynamic

    model = frozen_copy(model)
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice (its successor is torchao)
        warnings.simplefilter("ignore")
        model.image_encoder = quantize_dynamic(model.image_encoder, {nn.Linear}, dtype=torch.qint8)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode(images).float()

    return EncoderBackend("int8_dynamic", run, {"quantised": "nn.Linear (qint8 weights, dynamic activations)"})


def _example(model: nn.Module) -> torch.Tensor:
    return torch.rand(1, 3, model.img_size, model.img_size, generator=torch.Generator().manual_seed(0))


def onnxruntime_encoder(model: nn.Module, threads: int | None = None, optimization: str = "all") -> EncoderBackend:
    """ONNX Runtime (CPU execution provider) on an ONNX export of ``model.encode``.

    Args:
        threads: ``intra_op_num_threads``; default torch's thread count.
        optimization: the graph optimisation level, ``"all"`` (``ORT_ENABLE_ALL``, default), ``"extended"``,
            ``"basic"`` or ``"disable"``.

    Raises:
        ImportError: ``onnxruntime`` or ``onnx`` is not installed (the message says how to install them).
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime as ort
    except ImportError as err:
        raise _missing("onnxruntime", "onnx", err) from err
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
    threads = threads or torch.get_num_threads()
    start = time.perf_counter()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # the tracer's warnings about Python ints and asserts
        warnings.simplefilter("ignore")
        torch.onnx.export(
            frozen_encode(model),
            (_example(model),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["embedding"],
        )
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run_one(image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": image.numpy()})[0])

    info = {
        "version": ort.__version__,
        "threads": threads,
        "optimization": optimization,
        "export_s": round(export_s, 1),
        "onnx_mb": round(len(buffer.getvalue()) / 2**20, 1),
    }
    return EncoderBackend("onnxruntime", _one_by_one(run_one), info)


def openvino_encoder(model: nn.Module, threads: int | None = None, precision: str | None = "f32") -> EncoderBackend:
    """OpenVINO's CPU plugin on ``openvino.convert_model`` of ``model.encode``.

    Args:
        threads: ``INFERENCE_NUM_THREADS``; default torch's thread count.
        precision: ``INFERENCE_PRECISION_HINT`` (``"f32"``, default; ``"bf16"``, ``"f16"``), or None for the
            plugin's default; ``info["precision"]`` is the one the compiled model reports.

    Raises:
        ImportError: ``openvino`` is not installed (the message says how to install it).
    """
    try:
        import openvino as ov
    except ImportError as err:
        raise _missing("openvino", "openvino", err) from err
    threads = threads or torch.get_num_threads()
    start = time.perf_counter()
    converted = convert_encode(ov, model)
    config: dict = {"INFERENCE_NUM_THREADS": threads}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(converted, "CPU", config)
    convert_s = time.perf_counter() - start
    request = compiled.create_infer_request()

    def run_one(image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: image.numpy()})[0].copy())

    info = {
        "version": ov.__version__.split("-")[0],
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "precision_hint": precision or "default",
        "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "convert_s": round(convert_s, 1),
    }
    return EncoderBackend("openvino", _one_by_one(run_one), info)


_BUILDERS: dict[str, Callable[..., EncoderBackend]] = {
    "eager": eager_encoder,
    "channels_last": channels_last_encoder,
    "torch_compile": compiled_encoder,
    "int8_dynamic": int8_dynamic_encoder,
    "onnxruntime": onnxruntime_encoder,
    "openvino": openvino_encoder,
}


def build_encoder(backend: str, model: nn.Module, **options) -> EncoderBackend:
    """The encoder of ``model`` on ``backend`` (one of :data:`BACKENDS`), with that builder's ``options``."""
    from ..utils import check_option

    return _BUILDERS[check_option("encoder backend", backend, BACKENDS)](model, **options)


@contextlib.contextmanager
def using_encoder(model: nn.Module, backend: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[nn.Module]:
    """Within the block, ``model.encode`` runs ``backend`` (e.g. for a :class:`~monai_cbo.inferers.SliceWiseInferer`
    built on ``model``); restored on exit. The backend's result is moved to the model's device."""
    device = next(model.parameters()).device
    model.encode = lambda images: backend(images).to(device)
    try:
        yield model
    finally:
        del model.encode


def embedding_difference(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """Max and mean absolute difference, and the relative error ``||output - reference|| / ||reference||``."""
    diff = (output.float() - reference.float()).abs()
    norm = float(reference.float().norm())
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "rel_err": float(diff.norm()) / norm if norm > 0 else float(diff.norm()),
    }


def _round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Call each of ``fns`` once per round, in order, ``repeats`` rounds; the times of each, in seconds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def measure_encoder_backends(
    model_name: str = "litemedsam",
    repeats: int = 5,
    backends: Sequence[str] | None = None,
    threads: int | None = None,
    batch: int = 1,
    images: torch.Tensor | None = None,
    backend_options: dict[str, dict] | None = None,
) -> dict:
    """Time each backend's encoder against fp32 eager on the same images, in one process, interleaved.

    After one warm-up call each (whose output is compared, and whose time is ``first_call_s``: it includes
    ``torch.compile``'s compilation), every round calls eager and then each backend once; ``before_s`` and
    ``after_s`` are the medians over ``repeats`` rounds, ``speedup`` their ratio, so a busy machine slows
    both sides alike.

    Args:
        model_name: the model (``build_segmenter(model_name, preset="freeze")``).
        repeats: timed rounds.
        backends: the backends to compare with eager (default all of :data:`BACKENDS` but eager).
        threads: torch's threads (and the ONNX Runtime / OpenVINO thread count) during the run; default as set.
        batch: images per call, when ``images`` is not given (random, seeded).
        images: the images to encode, ``[N, 3, S, S]`` in [0, 1].
        backend_options: extra keyword arguments per backend's builder, e.g. ``{"openvino": {"precision": None}}``.

    Returns:
        ``{backend: figures}``: ``available`` and, when it ran, ``before_s``, ``after_s``, ``speedup``,
        ``round_speedups`` (eager's time over the backend's in each round: their spread shows the noise),
        ``first_call_s``, ``max_abs_diff``, ``mean_abs_diff``, ``rel_err`` and the backend's ``info``; when its
        package is missing, ``skipped`` (the reason); when it failed otherwise, ``error``.
    """
    from ..models import build_segmenter

    names = [b for b in (BACKENDS if backends is None else backends) if b != "eager"]
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown encoder backend {name!r}; choose from {', '.join(BACKENDS)}")
    options = backend_options or {}
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = build_segmenter(model_name, preset="freeze").eval()
        if images is None:
            s = model.img_size
            images = torch.rand(batch, 3, s, s, generator=torch.Generator().manual_seed(1))
        results: dict[str, dict] = {}
        built: dict[str, EncoderBackend] = {"eager": eager_encoder(model)}
        for name in names:
            try:
                built[name] = build_encoder(name, model, **options.get(name, {}))
            except ImportError as err:
                results[name] = {"available": False, "skipped": str(err)}
            except Exception as err:  # a backend that cannot build is a result, not a crash
                results[name] = {"available": True, "error": f"{type(err).__name__}: {err}"}
        outputs, first = {}, {}
        for name, backend in list(built.items()):
            start = time.perf_counter()
            try:
                outputs[name] = backend(images)
            except Exception as err:
                results[name] = {"available": True, "error": f"{type(err).__name__}: {err}"}
                del built[name]
                continue
            first[name] = time.perf_counter() - start
        times = _round_robin({name: (lambda b=b: b(images)) for name, b in built.items()}, repeats)
        before = statistics.median(times["eager"])
        for name in names:
            if name not in built:
                continue
            after = statistics.median(times[name])
            results[name] = {
                "available": True,
                "before_s": round(before, 4),
                "after_s": round(after, 4),
                "speedup": round(before / after, 3),
                "round_speedups": [round(b / a, 3) for b, a in zip(times["eager"], times[name], strict=True)],
                "first_call_s": round(first[name], 2),
                **embedding_difference(outputs[name], outputs["eager"]),
                "info": built[name].info,
            }
        return {name: results[name] for name in names}
    finally:
        torch.set_num_threads(previous_threads)
