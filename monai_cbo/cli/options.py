"""Option parsing the commands share: comma-separated values, negative numbers as typed, preprocessing, models."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..transforms.intensity import DEFAULT_CT_WINDOW

__all__ = [
    "absolute",
    "add_precision_option",
    "add_preprocess_options",
    "join_negative_values",
    "list_of",
    "load_model",
    "preprocess_of",
    "preprocess_options_given",
    "setting",
]


def list_of(kind: Callable[[str], Any], n: int | None = None, what: str = "values") -> Callable[[str], list]:
    """The one parser of comma-separated option values: ``kind`` per item (blanks and empty items dropped);
    exactly ``n`` items when given. Errors become argparse errors that show the message."""

    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None
        if n is not None and len(values) != n:
            raise argparse.ArgumentTypeError(f"{what} needs {n} comma-separated values, got {text!r}")
        return values

    return parse


def absolute(path: str) -> str:
    return str(Path(path).resolve())


def setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE a number or true/false (``--set``)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, e.g. min_overlap=0.5, got {text!r}")
    parsed = {"true": True, "false": False}.get(value.lower())
    if parsed is None:
        try:
            parsed = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--set {name}: {value!r} is not a number or true/false") from None
    return name.strip(), parsed


_NEGATIVE_VALUE = re.compile(r"-\.?\d[\d.eE+-]*(,[-+]?[\d.eE+-]+)*")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--window -160,240`` as ``--window=-160,240``: argparse takes a value that starts with ``-`` for an
    option unless it is one plain number, so a list of numbers starting with a negative one needs the ``=``."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUE.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


#: the preprocessing options: flag -> dest (each None unless given, so that a bundle can refuse them)
PREPROCESS_OPTIONS = {"--modality": "modality", "--window": "ct_window", "--channels": "channels", "--view": "view"}


def add_precision_option(p: argparse.ArgumentParser, training: bool = False) -> None:
    """``--precision``, and ``--no-amp`` (its former spelling, the same as ``--precision fp32``)."""
    from ..precision import PRECISIONS

    what = "the forward pass" if training else "the image encoder (the decoder stays fp32 on the CPU)"
    cpu = (
        "training in bf16 on a CPU with native bf16 (AVX-512 BF16 or AMX: about twice the steps in the same time) "
        "and its inference in fp32, fp32 on other CPUs"
        if training
        else "fp32 on the CPU"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=f"number format: auto (default) is fp16 autocast on CUDA and {cpu}; bf16 runs {what} "
        "in bf16, fast on a CPU with AVX-512 BF16 or AMX and emulated (about 20x slower) on one without; "
        "fp32 turns every autocast off (see monai_cbo.precision)",
    )
    p.add_argument(
        "--no-amp", dest="precision", action="store_const", const="fp32", help="the same as --precision fp32"
    )


def add_encoder_runtime_option(p: argparse.ArgumentParser) -> None:
    """``--encoder-runtime``: what runs the image encoder (:mod:`monai_cbo.networks.runtime`)."""
    from ..networks.runtime import RUNTIMES, default_runtime

    p.add_argument(
        "--encoder-runtime",
        choices=RUNTIMES,
        default=default_runtime(),
        help="what runs the image encoder: auto (default; $MONAI_CBO_ENCODER_RUNTIME sets another) is openvino "
        'where it is installed (pip install "monai-cbo[openvino]") and the encoder runs on the CPU, else torch. '
        "openvino gave the same masks about 2x faster in fp32, 3.3-3.9x with --precision bf16, on a CPU with "
        "native bf16 (docs/benchmarks/cpu_speed/backends.md); the first run of a model or adapter converts it "
        "(7-80 s) and keeps it in ~/.cache/monai_cbo ($MONAI_CBO_CACHE), later runs read it in under a second",
    )


def encoder_runtime(name: str, model, device, precision: str, command: str):
    """:func:`~monai_cbo.networks.runtime.encoder_for` of ``--encoder-runtime name`` for ``model`` on ``device``
    (default the model's) with ``--precision``'s encoder format, telling the user on stderr."""
    import torch

    from ..networks.runtime import encoder_for
    from ..precision import resolve_precision

    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = resolve_precision(precision, device).encoder
    return encoder_for(
        name, model, device, dtype, log=lambda message: print(f"monai-cbo {command}: {message}", file=sys.stderr)
    )


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    """How volumes become model input (:class:`~monai_cbo.inferers.Preprocess`): shared by segment and bench."""
    lo, hi = (f"{v:g}" for v in DEFAULT_CT_WINDOW)
    p.add_argument(
        "--modality",
        default=None,
        choices=["auto", "ct", "mri"],
        help="intensity scaling: CT window or MRI percentiles (default auto: CT if air in HU is found)",
    )
    p.add_argument(
        "--window",
        dest="ct_window",
        type=list_of(float, 2, "--window"),
        default=None,
        metavar="LO,HI",
        help=f"CT window in HU: LO and below become black, HI and above white, so it sets which tissues the model "
        f"tells apart. Default {lo},{hi} (soft tissue), the best of four windows over organs, muscle and bone "
        "(docs/benchmarks/ct_window.md); for bone -500,1000 scored a little higher",
    )
    p.add_argument(
        "--channels", type=list_of(int, what="--channels"), default=None, help="input channels to use, e.g. 0,1,3"
    )
    p.add_argument(
        "--view",
        default=None,
        choices=["axial", "coronal", "sagittal"],
        help="slicing direction after reorienting to RAS (default axial, as the bundles train)",
    )


def preprocess_options_given(args: argparse.Namespace) -> list[str]:
    """The preprocessing flags given on the command line."""
    return [flag for flag, dest in PREPROCESS_OPTIONS.items() if getattr(args, dest, None) is not None]


def preprocess_of(args: argparse.Namespace):
    """The :class:`~monai_cbo.inferers.Preprocess` of the options; a default for each one not given."""
    from ..inferers.volume import Preprocess

    given = {dest: getattr(args, dest) for dest in PREPROCESS_OPTIONS.values() if getattr(args, dest) is not None}
    if "ct_window" in given:
        given["ct_window"] = tuple(given["ct_window"])
    return Preprocess(**given)


def load_model(name: str | None, checkpoint: str | None, adapters: Sequence[str], payloads: Sequence[dict] = ()):
    """The model of ``adapters`` (one: that adapter's model; several: a mean-probability ensemble), or the base
    model ``name`` (default LiteMedSAM) without one. ``payloads``: the adapters' contents when already read.

    Raises:
        ValueError: ``name`` is not the model an adapter was trained on.
    """
    from ..models import load_ensemble
    from ..networks import build_model

    if adapters:
        model = load_ensemble(adapters, checkpoint=checkpoint, payloads=payloads or None)
        if name and name != model.model_name:
            raise ValueError(f"--model {name} but adapter {adapters[0]} was trained on {model.model_name}")
        return model
    return build_model(name or "litemedsam", checkpoint=checkpoint)
