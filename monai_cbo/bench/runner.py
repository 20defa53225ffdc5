"""``monai-cbo bench``: the ablation presets on one dataset, same budget, several seeds, resumable.

One run is one (preset, seed): build the model (:func:`~monai_cbo.models.build_segmenter`, as the bundles do),
train the preset's parameters for ``steps`` optimiser steps of ``batch`` 2D slices (cosine LR from ``lr`` to 0)
with the bundles' trainer and step (:func:`~monai_cbo.training.build_trainer`), then segment every evaluation
case with box prompts from its label (the benchmark protocol of ``monai-cbo segment --label``) and score it.
Every preset sees the same slices in the same order with the same box jitter for a given seed, so presets
differ only in what trains.

Layout of ``OUT`` (everything a report needs; reports are rebuilt from it without retraining)::

    bench.json                      the configuration (a resumed bench must match it)
    runs/<preset>/seed<k>/
        result.json                 written last: parameter counts, timings, loss curve, pooled 2D Dice
        metrics.csv                 Dice / HD95 / NSD per evaluation case and class
        adapter.pt                  the trained adapter (not for ``freeze``)
        masks/<case>_seg.nii.gz     predicted label maps in the input geometry

A run counts as done when its ``result.json`` exists; an interrupted bench resumes at the first run without
one, and an interrupted run starts again from its first step (a run is minutes, a checkpoint per step is not
worth its disk traffic).

The bench's parts: :mod:`~monai_cbo.bench.config` (:class:`BenchConfig`, what ``bench.json`` holds),
:mod:`~monai_cbo.bench.data` (:class:`BenchData`, the cases in memory), :mod:`~monai_cbo.bench.run` (one run:
:func:`train_and_evaluate`); this module runs them all (:func:`run_bench`) and reads them back
(:func:`collect_results`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..metrics import MetricsTable
from ..networks import feature_cache
from ..utils import machine_summary, write_atomic
from .config import (
    _RESUMABLE,
    DEFAULT_PRESETS,
    FORMER_NAMES,
    BenchConfig,
    _check_config,
    _current_names,
    check_init_adapter,
    decoder_lr,
)
from .data import BenchData, LoadedCase, entry_name
from .run import AUTO_MODES, format_eta, train_and_evaluate

__all__ = [
    "AUTO_MODES",
    "DEFAULT_PRESETS",
    "FORMER_NAMES",
    "BenchConfig",
    "BenchData",
    "BenchFailed",
    "LoadedCase",
    "check_init_adapter",
    "collect_results",
    "decoder_lr",
    "entry_name",
    "run_bench",
    "train_and_evaluate",
]


class BenchFailed(RuntimeError):
    """Some runs of a bench failed; the message lists each with its reason."""


def run_bench(config: BenchConfig, log: Callable[[str], None] | None = None, command: str | None = None) -> list[dict]:
    """Run every (preset, seed) of ``config`` not yet done in ``config.out``; return all results (done ones
    read back). A failing run is reported and the others still run; raises at the end if any failed.
    ``command`` (the command line) and the machine are recorded in ``bench.json`` for the report."""
    log = log or (lambda line: print(line, flush=True))
    if config.init_adapter:
        check_init_adapter(config)  # before anything is written or minutes of data are loaded
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "bench.json"
    if config_path.exists():
        _check_config(config, config_path)
        saved = _current_names(json.loads(config_path.read_text(encoding="utf-8")))
        saved.update({k: getattr(config, k) for k in _RESUMABLE})
        payload = saved
    else:
        payload = dataclasses.asdict(config)
    device = config.torch_device
    payload["command"] = command or payload.get("command")
    payload["machine"] = {**machine_summary(device), "cpus": os.cpu_count()}
    write_atomic(config_path, lambda p: p.write_text(json.dumps(payload, indent=2), encoding="utf-8"), overwrite=True)

    runs = config.runs()
    todo = [(p, s) for p, s in runs if not (out / "runs" / p / f"seed{s}" / "result.json").exists()]
    log(
        f"bench {out}: {len(runs)} runs ({len(runs) - len(todo)} done, {len(todo)} to do): "
        f"{config.steps} steps x {config.batch_size} slices, learning rate {config.learning_rate}, model {config.model}"
    )
    if not todo:
        return collect_results(out)
    data = BenchData(config, log)
    features = feature_cache(config.cache_mib) if config.cache_mib > 0 else None
    durations: dict[str, list[float]] = {}  # seconds per run by preset, finished runs included, for the ETA
    for done in collect_results(out):
        durations.setdefault(done["preset"], []).append(done.get("seconds", math.nan))
    failures = []
    bench_start = time.perf_counter()
    for n, (preset, seed) in enumerate(todo, 1):
        run_dir = out / "runs" / preset / f"seed{seed}"
        if run_dir.exists():  # an interrupted run: start it again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        known = [t for ts in durations.values() for t in ts if math.isfinite(t)]
        left = sum(np.mean(durations.get(p, known)) for p, _ in todo[n - 1 :]) if known else math.nan
        eta = f", bench ETA {format_eta(left)}" if known else ""
        log(f"[{n}/{len(todo)}] {preset} seed {seed}{eta}")
        start = time.perf_counter()
        try:
            result = train_and_evaluate(config, data, preset, seed, run_dir, features, log)
        except Exception as err:  # one failing run must not lose the others
            failures.append(f"{preset} seed {seed}: {type(err).__name__}: {err}")
            log(f"  failed: {failures[-1]}")
            continue
        result["seconds"] = time.perf_counter() - start
        write_atomic(
            run_dir / "result.json", lambda p, r=result: p.write_text(json.dumps(r, indent=1), encoding="utf-8"), True
        )
        durations.setdefault(preset, []).append(result["seconds"])
        dice = ", ".join(f"{k} {v:.3f}" for k, v in _mean_dice(run_dir / "metrics.csv").items())
        log(f"  done in {format_eta(result['seconds'])}: mean Dice {dice}")
    if features is not None:
        log(
            f"feature cache: {len(features)} entries, {features.bytes / 2**20:.0f} MiB, "
            f"{features.hits} hits / {features.misses} misses"
        )
    log(f"bench finished in {format_eta(time.perf_counter() - bench_start)}")
    if failures:
        raise BenchFailed(
            f"{len(failures)} run(s) failed (the others are kept; fix the cause and run the same "
            "command again to redo only these):\n  " + "\n  ".join(failures)
        )
    return collect_results(out)


def _mean_dice(csv: Path) -> dict[str, float]:
    return {row["class"]: row["dice_mean"] for row in MetricsTable.read_csv(csv).summary()}


def collect_results(out: str | Path) -> list[dict]:
    """The ``result.json`` of every finished run under ``out``, in preset then seed order."""
    found = []
    for path in sorted(Path(out).glob("runs/*/seed*/result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        result["dir"] = str(path.parent)
        found.append(result)
    return found


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `monai-cbo bench`")
