"""Method ablation benchmarks: ``monai-cbo bench`` trains and scores presets, ``monai-cbo report`` writes tables,
plots and overlays from a bench folder."""

from __future__ import annotations

from .config import DEFAULT_PRESETS, BenchConfig
from .data import BenchData
from .run import train_and_evaluate
from .runner import collect_results, run_bench

__all__ = ["DEFAULT_PRESETS", "BenchConfig", "BenchData", "collect_results", "run_bench", "train_and_evaluate"]
