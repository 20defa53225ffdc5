"""Another runtime for a segmenter's image encoder on the CPU: OpenVINO, with the converted model kept on disk.

The encoder is most of a CPU case's time (docs/benchmarks/cpu_speed/case_timing.md). OpenVINO runs LiteMedSAM's
encoder about twice as fast as eager PyTorch in fp32 with the same embedding to ~4e-6 (the same Dice on every
validation case), 3.3-3.9x in bf16 on a CPU with native bf16 (docs/benchmarks/cpu_speed/backends.md). Converting
the model takes 7-80 s, which a command that starts a fresh process per case cannot pay each time: the converted
model (OpenVINO IR, fp32 weights) is written once per encoder - the base model's weights with the adapter's,
hashed - under :func:`cache_dir`, with OpenVINO's compiled form beside it; later processes load it in under a
second. The number format is the compile step's (``INFERENCE_PRECISION_HINT``), so fp32 and bf16 share one IR.

Use it through :class:`~monai_cbo.inferers.SliceWiseInferer`'s ``encoder`` (``monai-cbo segment
--encoder-runtime``, whose default ``auto`` picks it where openvino is installed: ``pip install
"monai-cbo[openvino]"``). CPU only; one image per call (the converted graph has the batch size of one baked in;
a batch is encoded image by image).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CACHE_ENV",
    "RUNTIMES",
    "RUNTIME_ENV",
    "cache_dir",
    "convert_encode",
    "default_runtime",
    "encoder_for",
    "encoder_key",
    "frozen_copy",
    "frozen_encode",
    "openvino_available",
    "openvino_encoder",
    "resolve_runtime",
]

#: the ``--encoder-runtime`` choices: ``auto`` (openvino where it is installed and the encoder runs on the CPU,
#: else torch), ``torch`` (the model's own ``encode``) or ``openvino``
RUNTIMES = ("auto", "torch", "openvino")
#: environment variable giving ``--encoder-runtime``'s default (else ``auto``)
RUNTIME_ENV = "MONAI_CBO_ENCODER_RUNTIME"
#: environment variable naming the folder for converted encoders (default ``$XDG_CACHE_HOME/monai_cbo`` or
#: ``~/.cache/monai_cbo``)
CACHE_ENV = "MONAI_CBO_CACHE"
#: OpenVINO's precision hints for the encoder's autocast dtype (None: fp32)
_HINTS = {None: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def default_runtime() -> str:
    """``--encoder-runtime``'s default: ``$MONAI_CBO_ENCODER_RUNTIME`` when set to one of :data:`RUNTIMES`, else
    ``auto``."""
    value = os.environ.get(RUNTIME_ENV, "").strip().lower()
    return value if value in RUNTIMES else "auto"


def openvino_available() -> bool:
    """Whether the openvino package is installed (not imported here)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(name: str, device: torch.device | str, model: nn.Module) -> str:
    """``torch`` or ``openvino``: ``auto`` is openvino where it is installed, the encoder runs on the CPU and
    ``model`` is one segmenter (an ensemble encodes once per adapter in torch), else torch; the others as given."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    if name != "auto":
        return name
    single = hasattr(model, "image_encoder") and hasattr(model, "img_size")
    return "openvino" if torch.device(device).type == "cpu" and single and openvino_available() else "torch"


def encoder_for(
    name: str,
    model: nn.Module,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The encoder of runtime ``name`` for ``model`` on ``device`` in ``dtype`` (None: fp32): a callable for
    :class:`~monai_cbo.inferers.SliceWiseInferer`'s ``encoder``, or None for the model's own (torch). ``auto``
    falls back to torch, saying so through ``log``, when OpenVINO cannot convert or run the model; ``openvino``
    asked for by name raises instead.

    Raises:
        ValueError: ``openvino`` on a CUDA device or for an ensemble of adapters (the message says what to give).
        ImportError: ``openvino`` and the package is not installed (the message says how to install it).
    """
    device = torch.device(device)
    if name == "openvino":
        if device.type != "cpu":
            raise ValueError(
                "--encoder-runtime openvino runs on the CPU; give --device cpu, or --encoder-runtime torch"
            )
        if not hasattr(model, "image_encoder"):
            raise ValueError("--encoder-runtime openvino runs one model: give one adapter, or --encoder-runtime torch")
    if resolve_runtime(name, device, model) == "torch":
        return None
    try:
        encoder = openvino_encoder(model, dtype, log=log)
    except Exception as err:  # noqa: BLE001 - auto must not fail what torch can do
        if name != "auto":
            raise
        if log:
            log(f"warning: openvino could not run this model's encoder ({type(err).__name__}: {err}); using torch")
        return None
    if log:
        log(f"image encoder on openvino ({encoder.info['precision']}; --encoder-runtime torch for the model's own)")
    return encoder


def cache_dir() -> Path:
    """The folder converted encoders are kept in: ``$MONAI_CBO_CACHE``, else ``$XDG_CACHE_HOME/monai_cbo``, else
    ``~/.cache/monai_cbo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "monai_cbo"


class _Encode(nn.Module):
    """``model.encode`` as a module's forward, for exporters that trace ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no parameter requiring grad (``model`` is left as it is)."""
    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


def frozen_encode(model: nn.Module) -> nn.Module:
    """A module whose forward is ``model.encode`` (normalisation included), on a frozen fp32 CPU copy: what the
    exporters trace."""
    return _Encode(frozen_copy(model).float().cpu())


def encoder_key(model: nn.Module, *extra: str) -> str:
    """A hash of what the encoder computes: the class, input size, normalisation and every tensor of the model
    (the base weights and an adapter's alike; the whole model, so that weights an adapter shares between blocks
    from outside the encoder count too), with ``extra`` (e.g. the runtime's version)."""
    h = hashlib.sha256()
    head = [type(model).__qualname__, str(getattr(model, "img_size", "")), str(getattr(model, "normalize", ""))]
    h.update("|".join([*head, *extra]).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # flat: a 0-dim buffer (a count) too
    return h.hexdigest()[:32]


def _missing_openvino(err: ImportError) -> ImportError:
    return ImportError(
        f'the openvino runtime needs the openvino package ({err}): pip install "monai-cbo[openvino]", or leave '
        "--encoder-runtime at torch"
    )


def openvino_encoder(
    model: nn.Module,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    cache: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s image encoder on OpenVINO's CPU plugin: ``encoder(images [N, 3, S, S]) -> [N, C, h, w]``
    (float32, CPU), the same as ``model.encode`` to float rounding in fp32.

    Args:
        model: a :class:`~monai_cbo.networks.SamSegmenter` (adapter included: its weights are part of the key).
        dtype: the number format to run in: None (fp32) or ``torch.bfloat16`` (fast on a CPU with AVX-512 BF16 or
            AMX); what ``--precision`` resolved to for the encoder.
        threads: OpenVINO's threads; default torch's thread count.
        cache: where the converted model is kept (default :func:`cache_dir`); False-like ``""`` is not allowed,
            give a folder. Converted on first use (20-80 s for LiteMedSAM), then read.
        log: told when a conversion starts and where it went.

    Raises:
        ImportError: openvino is not installed (the message says how to install it).
        ValueError: a dtype OpenVINO's CPU plugin has no hint for.
    """
    try:
        import openvino as ov
    except ImportError as err:
        raise _missing_openvino(err) from err
    if dtype not in _HINTS:
        raise ValueError(f"the openvino runtime runs fp32, bf16 or fp16, not {dtype}")
    root = Path(cache) if cache else cache_dir()
    version = ov.__version__.split("-")[0]
    key = encoder_key(model, "openvino", version)
    folder = root / "openvino" / key
    xml = folder / "encoder.xml"
    core = ov.Core()
    if not xml.exists():
        _convert(ov, model, folder, log)
    threads = threads or torch.get_num_threads()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": _HINTS[dtype]}
    # OpenVINO keeps the compiled form beside it (per number format and CPU): 0.17 s to load, 0.47 s to compile
    config["CACHE_DIR"] = str(folder / "compiled")
    compiled = core.compile_model(core.read_model(xml), "CPU", config)
    request = compiled.create_infer_request()
    size = int(getattr(model, "img_size", 0)) or None

    def encode(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu().contiguous()
        if size is not None and tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"the openvino encoder takes images [N, 3, {size}, {size}], got {tuple(images.shape)}")
        outs = [torch.from_numpy(request.infer({0: images[i : i + 1].numpy()})[0].copy()) for i in range(len(images))]
        return torch.cat(outs)

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: f32, bf16
    encode.info = {
        "runtime": "openvino",
        "version": version,
        "precision": hint.to_string() if hasattr(hint, "to_string") else str(hint),
        "threads": threads,
        "model": str(xml),
    }
    return encode


def convert_encode(ov, model: nn.Module):
    """``model.encode`` (normalisation included) converted by ``openvino.convert_model`` from a frozen fp32 CPU
    copy, for a batch of one image of the model's input size: an ``openvino.Model``, in memory."""
    size = int(model.img_size)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python ints and asserts
        return ov.convert_model(frozen_encode(model), example_input=example, input=[tuple(example.shape)])


def _convert(ov, model: nn.Module, folder: Path, log: Callable[[str], None] | None) -> None:
    """Convert ``model.encode`` to OpenVINO IR (fp32 weights) into ``folder``, atomically: written beside it and
    renamed, so a process that stops half-way or a second one converting at the same time leaves no torn model."""
    if log:
        log(f"converting the image encoder for openvino once (kept in {folder.parent}; later runs read it)")
    start = time.perf_counter()
    converted = convert_encode(ov, model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        ov.save_model(converted, tmp / "encoder.xml", compress_to_fp16=False)  # fp16 weights would change masks
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first: its copy is the same model
            if not (folder / "encoder.xml").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"converted in {time.perf_counter() - start:.0f} s")
