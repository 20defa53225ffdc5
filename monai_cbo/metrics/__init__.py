"""Benchmark metrics: per-volume Dice / HD95 / NSD in mm, the paper's pooled 2D Dice, and the results table.

Empty-mask conventions: both empty -> Dice 1, HD95 0, NSD 1; exactly one empty -> Dice 0, NSD 0, HD95 NaN
(counted apart in :class:`MetricsTable`). See :mod:`monai_cbo.metrics.segmentation`.
"""

from __future__ import annotations

from monai_cbo.metrics.pooled import PooledDice, pooled_dice_2d
from monai_cbo.metrics.segmentation import case_metrics, dice_3d, hd95, nsd
from monai_cbo.metrics.table import MetricsTable

__all__ = ["MetricsTable", "PooledDice", "case_metrics", "dice_3d", "hd95", "nsd", "pooled_dice_2d"]
