"""The paper's Dice: 2D slices pooled over the whole test set, accumulated volume by volume."""

from __future__ import annotations

from collections.abc import Iterable

from monai_cbo.metrics.segmentation import Array, ClassSpec, _label_pair, _region_mask, _regions

__all__ = ["PooledDice", "pooled_dice_2d"]


class PooledDice:
    """Dice pooled over slices, as in the paper: per class ``Σ_s 2|P_s∩G_s| / Σ_s (|P_s|+|G_s|)``.

    The sums run over every 2D slice of every volume fed to :meth:`update`, so large structures weigh more
    than small ones and a slice without ground truth counts only through its false positives; over all
    slices this equals Dice over all voxels of the test set. This project's main figure is the per-volume 3D
    Dice (:func:`~monai_cbo.metrics.case_metrics`); report this one beside it for comparability with the paper.

    Args:
        classes: ``{label: name}`` or ``{region: [labels]}``, as in :func:`~monai_cbo.metrics.case_metrics`.
        axis: the slice axis of the label maps (only used when ``gt_slices_only``). Defaults to -1.
        gt_slices_only: sum only the slices whose ground truth holds the class (a 2D test set made of the
            slices that show the object, where a ground-truth box prompt exists). Defaults to False.
    """

    def __init__(self, classes: ClassSpec, axis: int = -1, gt_slices_only: bool = False) -> None:
        self.regions = _regions(classes)
        self.axis, self.gt_slices_only = axis, gt_slices_only
        self.reset()

    def reset(self) -> None:
        """Forget every volume added so far."""
        self.intersection = dict.fromkeys(self.regions, 0)
        self.total = dict.fromkeys(self.regions, 0)
        self.volumes = 0

    def update(self, pred_labels: Array, gt_labels: Array) -> None:
        """Add one case: integer label maps of the same 2D/3D shape, no channel axis."""
        p, g = _label_pair(pred_labels, gt_labels)
        if self.gt_slices_only and not -p.ndim <= self.axis < p.ndim:
            raise ValueError(f"axis {self.axis} is out of range for {p.ndim}D label maps; pick the slice axis")
        for name, ids in self.regions.items():
            pm, gm = _region_mask(p, ids), _region_mask(g, ids)
            if self.gt_slices_only:
                keep = gm.movedim(self.axis, 0).flatten(1).any(1)
                pm, gm = pm.movedim(self.axis, 0)[keep], gm.movedim(self.axis, 0)[keep]
            self.intersection[name] += int((pm & gm).sum())
            self.total[name] += int(pm.sum()) + int(gm.sum())
        self.volumes += 1

    def compute(self) -> dict[str, float]:
        """``{class name: pooled Dice}``; 1.0 for a class absent from every prediction and ground truth."""
        if not self.volumes:
            raise ValueError("PooledDice.compute() before any update(); add volumes with update(pred, gt) first")
        return {k: 2.0 * self.intersection[k] / t if (t := self.total[k]) else 1.0 for k in self.regions}


def pooled_dice_2d(
    pairs: Iterable[tuple[Array, Array]], classes: ClassSpec, axis: int = -1, gt_slices_only: bool = False
) -> dict[str, float]:
    """Pooled 2D Dice over ``(pred_labels, gt_labels)`` pairs, as in the paper (see :class:`PooledDice`)."""
    pooled = PooledDice(classes, axis, gt_slices_only)
    for pred, gt in pairs:
        pooled.update(pred, gt)
    return pooled.compute()
