"""Small shared helpers: option checks, atomic file output, CPU allocator tuning."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_output",
    "check_option",
    "check_overwrite",
    "cpu_native_bf16",
    "keep_freed_memory",
    "load_weights_only",
    "machine_summary",
    "write_atomic",
]


def check_option(kind: str, value: Any, allowed: Collection) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ValueError naming the options, with the "did you
    mean" guess of :func:`monai.utils.look_up_option` (which this wraps: it returns a mapping's *value* and strips
    strings, where callers here need the key itself checked exactly)."""
    if value in allowed:
        return value
    from monai.utils import look_up_option  # imported here: importing monai takes seconds

    options = ", ".join(repr(a) for a in allowed)
    try:
        look_up_option(value, allowed, print_all_options=False)
        guess = f" (did you mean {str(value).strip()!r}?)"  # MONAI accepts it once stripped of blanks
    except ValueError as err:
        found = re.search(r"did you mean '([^']*)'", str(err))
        guess = f" (did you mean {found.group(1)!r}?)" if found else ""
    raise ValueError(f"unknown {kind} {value!r}; choose one of {options}{guess}")


def check_overwrite(path: str | Path, overwrite: bool) -> Path:
    """Return ``path``; raise FileExistsError if it exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` atomically.

    A crash or an exception leaves ``path`` as it was (absent or the previous version) and removes the
    temporary file. The temporary name keeps the suffixes of ``path`` so writers that infer the format
    from the name (``.nii.gz``) still work.
    """
    path = check_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.removesuffix(suffix)}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, overwrite) as tmp:
        write(tmp)
    return Path(path)


def load_weights_only(path: str | Path, what: str, fix: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain values only, so no code in the
    file can run. Any failure (missing, truncated, corrupt, or holding other objects) is a FileNotFoundError
    or ValueError that names ``what`` and ``path`` and ends with ``fix``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; {fix}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip, globals refused by weights_only
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"cannot read {what} {path}: {type(err).__name__}{': ' + detail if detail else ''}. It is corrupt, "
            f"truncated, or holds objects other than tensors and plain values (refused for safety); {fix}"
        ) from err


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep large freed blocks instead of unmapping them (Linux only).

    SAM-family encoders allocate activations of tens of MB per slice; glibc serves those with ``mmap`` and
    returns them on ``free``, so every forward pass page-faults its working memory in again. Serving them
    from the heap and not trimming it made LiteMedSAM's encoder about 1.6x faster on a 2-core CPU (see
    docs/benchmarks/core.md); the cost is that the process keeps its peak memory until it exits. Called by
    the command line and the bundles; set ``MONAI_CBO_MALLOC_TUNING=0`` to opt out. Returns whether it applied.
    """
    if os.environ.get("MONAI_CBO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX-BF16), as oneDNN's bf16 kernels need;
    without it torch emulates bf16 and is far slower than fp32. Asks torch, then ``/proc/cpuinfo``."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            return bool(probe()) or bool(amx is not None and amx())
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_summary(device: Any = "cpu") -> dict[str, str | int]:
    """What a timing or a benchmark ran on: Python, torch, the CPU, torch's threads, the device (and its GPU)."""
    import platform

    import torch

    device = torch.device(device)
    info: dict[str, str | int] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count() or 0,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": int(cpu_native_bf16()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
