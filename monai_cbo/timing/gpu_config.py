"""What one ``monai-cbo gpu-check`` call runs (:class:`GpuCheck`): its steps, time caps, throughput grid and
bench budget; the steps themselves are in :mod:`~monai_cbo.timing.gpu_capped_steps` and
:mod:`~monai_cbo.timing.gpu_throughput`, the call in :mod:`~monai_cbo.timing.gpu_check`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BENCH_PRESETS", "REPO", "STEPS", "GpuCheck"]

REPO = Path(__file__).resolve().parents[2]
STEPS = ("tests", "throughput", "bench")
BENCH_PRESETS = "lora,lora_cbo,adapter,adapter_cbo"


@dataclass
class GpuCheck:
    """What one call runs. ``dry_run``: the CPU rehearsal with the tiny model (automatic without CUDA).

    Args:
        out_dir: where the (at most 8) result files go; created.
        data: folder holding ``Task04_Hippocampus/`` and ``hippocampus.json`` (``prepare_gpu_carry.sh``).
        bench_dir: the bench folder, resumed if it exists (default ``<data>/bench``; a dry run uses a temporary one).
        time_limit: seconds for the whole call; the bench gets what the first two steps leave.
        steps: which of ``tests``, ``throughput``, ``bench`` to run.
        tests_limit, throughput_limit: caps of those steps in seconds.
        models, dtypes, batch_sizes, preset: the throughput grid (training uses ``preset``).
        bench_*: the bench budget.
    """

    out_dir: Path
    data: Path = REPO / ".gpudata"
    bench_dir: Path | None = None
    time_limit: float = 450.0
    steps: tuple[str, ...] = STEPS
    dry_run: bool = False
    tests_limit: float = 210.0
    throughput_limit: float = 150.0
    models: tuple[str, ...] = ("litemedsam", "vit_b")
    dtypes: tuple[str, ...] = ("bf16", "fp16")
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    preset: str = "lora_cbo"
    bench_presets: str = BENCH_PRESETS
    bench_seeds: str = "0,1,2"
    bench_steps: int = 2000
    bench_batch: int = 8
    bench_lr: float = 3e-4
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir, self.data = Path(self.out_dir), Path(self.data)
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown or not self.steps:
            raise ValueError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
        if self.time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.dry_run:  # the CPU rehearsal: tiny everything, a few seconds
            self.models, self.batch_sizes, self.tests_limit, self.throughput_limit = ("tiny",), (1, 2), 120.0, 60.0
