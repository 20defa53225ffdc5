"""A stage stopwatch for one run: where the seconds of a ``monai-cbo segment`` case go.

The bottom floor of the package: the standard library only (torch is looked up in ``sys.modules`` to wait for
CUDA at the end of a stage, never imported here). Code marks its stages::

    with stage("encoder"):
        out = model.encode(batch)
    count("slices_encoded", len(batch))
    mark("mask_written")  # the wall-clock time of a moment

and a caller that wants the figures records them::

    with recording() as rec:
        segment_case(...)
    rec.as_dict()  # {"stages": {"encoder": {"seconds": ..., "calls": ...}, ...}, "counters": {...}}

With no recorder active (the default) :func:`stage` hands out one shared do-nothing context and :func:`count`
returns at once: a context-variable look-up per call, nothing more. The recorder is held in a
:class:`contextvars.ContextVar`, so a thread or task started without the caller's context records nothing, and
two contexts record into their own recorders. Stages of one name add up (seconds and calls); stages that nest
count their time in each name, so the stages a caller adds up must not nest.

Stage names of the segment path: ``startup`` (interpreter start to the command's own imports done), ``build``
(model build and adapter load), ``read``, ``preprocess``, ``encoder``, ``decoder.<kind>`` (one per decode call,
``<kind>`` the prompt's parts: ``box``, ``points``, ``mask`` joined by ``+``; ``classes`` for the learned class
prompts), ``postprocess``, ``score``, ``write``. Counters: ``slices_encoded``, ``slices_in_volume``.

Process start (:func:`process_start`): the wall-clock time the process began, from ``/proc/self/stat``'s start
time (clock ticks after boot) against ``CLOCK_BOOTTIME`` (Linux; about 10 ms resolution); elsewhere from the
``MONAI_CBO_SPAWNED_AT`` environment variable a parent sets to its ``time.time()`` just before it starts the
process (:data:`SPAWNED_AT_ENV`); else unknown. :data:`IMPORTED_AT` is when this module was first imported: the
command line imports it first, so ``IMPORTED_AT - process start`` is the interpreter's own start.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = [
    "IMPORTED_AT",
    "SPAWNED_AT_ENV",
    "Recorder",
    "active",
    "count",
    "mark",
    "process_start",
    "recording",
    "stage",
]

#: ``time.time()`` when this module was first imported (the command line imports it before anything heavy)
IMPORTED_AT = time.time()

#: the environment variable a parent sets to its ``time.time()`` just before starting a process it times
SPAWNED_AT_ENV = "MONAI_CBO_SPAWNED_AT"

_RECORDER: ContextVar[Recorder | None] = ContextVar("monai_cbo_stopwatch", default=None)
_IDLE = contextlib.nullcontext()


def _cuda_sync() -> None:
    """Wait for queued CUDA work when torch is loaded and CUDA started: a stage then owns its GPU time."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class _Stage:
    __slots__ = ("_name", "_recorder", "_start")

    def __init__(self, recorder: Recorder, name: str) -> None:
        self._recorder, self._name = recorder, name

    def __enter__(self) -> None:
        if self._recorder.sync:
            _cuda_sync()
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self._recorder.sync:
            _cuda_sync()
        self._recorder.add(self._name, time.perf_counter() - self._start)


class Recorder:
    """Seconds and calls per stage name, and counters, in the order first seen.

    Args:
        sync: wait for CUDA at each stage's start and end (when torch has started CUDA), so that queued GPU
            work is counted in the stage that queued it. Default True.
    """

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.marks: dict[str, float] = {}

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        """Add ``seconds`` (and ``calls``) to stage ``name``: for a stage timed elsewhere (the start-up)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + calls

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def mark(self, name: str) -> None:
        """Note ``time.time()`` now as the moment ``name`` (the latest call wins: the last mask written)."""
        self.marks[name] = time.time()

    @property
    def total(self) -> float:
        """The seconds of every stage added up (meaningful when no stage nests in another)."""
        return sum(self.seconds.values())

    def as_dict(self, digits: int = 4) -> dict:
        """``{"stages": {name: {"seconds", "calls"}}, "counters": {name: n}}``."""
        return {
            "stages": {
                name: {"seconds": round(s, digits), "calls": self.calls[name]} for name, s in self.seconds.items()
            },
            "counters": dict(self.counters),
        }


def stage(name: str) -> contextlib.AbstractContextManager:
    """A context that adds its wall time to stage ``name`` of the active recorder; a shared no-op without one."""
    recorder = _RECORDER.get()
    return _IDLE if recorder is None else _Stage(recorder, name)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name`` of the active recorder (nothing without one)."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.count(name, n)


def mark(name: str) -> None:
    """Note the wall-clock time of moment ``name`` in the active recorder (nothing without one)."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.mark(name)


def active() -> Recorder | None:
    """The recorder of this context, or None."""
    return _RECORDER.get()


@contextlib.contextmanager
def recording(recorder: Recorder | None = None) -> Iterator[Recorder]:
    """Make ``recorder`` (default a new one) the active recorder of this context for the ``with`` block."""
    recorder = Recorder() if recorder is None else recorder
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def process_start() -> tuple[float | None, str]:
    """``(time.time() when this process started, how that was found)``; ``(None, "unknown")`` where neither
    ``/proc`` nor :data:`SPAWNED_AT_ENV` tells (see the module docstring)."""
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, counted after the command's name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age, "/proc/self/stat starttime against CLOCK_BOOTTIME"
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    spawned = os.environ.get(SPAWNED_AT_ENV)
    if spawned:
        try:
            at = float(spawned)
        except ValueError:
            at = math.nan
        if math.isfinite(at) and at <= time.time():  # a time, and not one still to come
            return at, f"{SPAWNED_AT_ENV} set by the parent just before it started the process"
    return None, "unknown"
