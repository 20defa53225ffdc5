"""Per-volume segmentation metrics in millimetres: Dice, HD95, NSD, and per-class / per-region rows.

Conventions (the same in every function and table of this package):

- both masks empty: Dice 1.0, HD95 0.0 mm, NSD 1.0;
- exactly one empty: Dice 0.0, NSD 0.0, HD95 NaN (undefined: never a made-up number such as the image
  diagonal; :class:`~monai_cbo.metrics.MetricsTable` averages HD95 over the defined cases and counts the rest).

HD95 and NSD are MONAI's (``monai.metrics.compute_hausdorff_distance`` and ``compute_surface_dice``, the same
functions the bundles' ``HausdorffDistance`` handler uses), called on one-hot masks with the voxel spacing, so a
bench table and a bundle evaluation measure surfaces the same way; this module adds the empty-mask conventions
above, label maps and regions, and input checks. Their distance transforms come from scipy (a dependency).

- Surfaces: the mask voxels with a face neighbour outside the mask (voxels beyond the array count as
  background); distances between voxel centres are exact Euclidean distances in mm, returned in float32
  (a few 1e-6 relative).
- HD95: the larger of the two directed 95th percentiles (linear interpolation) of surface distances.
- NSD: (pred-surface voxels within ``tolerance_mm`` of the gt surface + gt-surface voxels within it of the
  pred surface) / (surface voxels of both), ``compute_surface_dice(use_subvoxels=False)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import torch

__all__ = ["case_metrics", "dice_3d", "hd95", "nsd"]

Array = np.ndarray | torch.Tensor
ClassSpec = Mapping[int, str] | Mapping[str, Iterable[int]]


def _tensor(x: Array, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
    elif isinstance(x, torch.Tensor):
        x = x.as_subclass(torch.Tensor)  # a plain tensor: MONAI MetaTensor metadata tracking is not needed here
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    return torch.as_tensor(x)


def _mask(x: Array, name: str) -> torch.Tensor:
    t = _tensor(x, name)
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(
                f"{name} must be a binary mask (bool or 0/1), found values {torch.unique(t)[:6].tolist()}; "
                "select one class first (labels == k) or use case_metrics for label maps"
            )
        t = t != 0
    return t


def _check_pair(p: torch.Tensor, g: torch.Tensor, names: tuple[str, str]) -> None:
    if p.shape != g.shape:
        raise ValueError(
            f"{names[0]} shape {tuple(p.shape)} differs from {names[1]} shape {tuple(g.shape)}; "
            "resample the prediction onto the ground-truth grid (same array axes) first"
        )
    if p.ndim not in (2, 3):
        raise ValueError(f"{names[0]} and {names[1]} must be 2D or 3D arrays without channel axes, got {p.ndim}D")


def _pair(pred: Array, gt: Array) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _mask(pred, "pred"), _mask(gt, "gt")
    _check_pair(p, g, ("pred", "gt"))
    return p, g.to(p.device)


def _spacing(spacing: float | Sequence[float] | np.ndarray, ndim: int) -> tuple[float, ...]:
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(
            f"spacing {spacing!r} must be one positive voxel size in mm per array axis ({ndim} values, in the "
            "array's axis order, e.g. nibabel header.get_zooms()[:3]) or a single isotropic value"
        )
    return tuple(float(s) for s in sp)


def _dice(p: torch.Tensor, g: torch.Tensor) -> float:
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def _surface_metrics(p: torch.Tensor, g: torch.Tensor, spacing: tuple[float, ...], tol: float) -> tuple[float, float]:
    """(HD95 in mm, NSD at ``tol`` mm) with the module's empty-mask conventions; MONAI computes both."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    has_p, has_g = bool(p.any()), bool(g.any())
    if not (has_p and has_g):
        return (0.0, 1.0) if has_p == has_g else (math.nan, 0.0)
    one_hot = {
        "y_pred": p[None, None].float(),
        "y": g[None, None].float(),
        "include_background": True,
        "spacing": list(spacing),
    }
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own helpers still pass
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(**one_hot, percentile=95).item()
        surface_dice = compute_surface_dice(**one_hot, class_thresholds=[tol], use_subvoxels=False).item()
    return hd, surface_dice


def _check_tolerance(tolerance_mm: float) -> float:
    if not (isinstance(tolerance_mm, Real) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite distance >= 0 in mm, got {tolerance_mm!r}")
    return float(tolerance_mm)


def dice_3d(pred: Array, gt: Array) -> float:
    """Dice ``2|P∩G| / (|P|+|G|)`` of one binary volume pair (2D or 3D arrays of the same shape).

    ``pred``/``gt``: bool or 0/1 numpy arrays or torch tensors, no channel axis. Both empty -> 1.0.
    """
    return _dice(*_pair(pred, gt))


def hd95(pred: Array, gt: Array, spacing: float | Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the surfaces of two binary masks.

    ``spacing``: voxel size in mm per array axis (same axis order as the arrays), or one isotropic value.
    Both empty -> 0.0; exactly one empty -> NaN (undefined).
    """
    p, g = _pair(pred, gt)
    return _surface_metrics(p, g, _spacing(spacing, p.ndim), 0.0)[0]


def nsd(pred: Array, gt: Array, spacing: float | Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice: the fraction of both surfaces lying within ``tolerance_mm`` of the other.

    ``spacing`` as in :func:`hd95`. Both empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _pair(pred, gt)
    return _surface_metrics(p, g, _spacing(spacing, p.ndim), _check_tolerance(tolerance_mm))[1]


def _regions(classes: ClassSpec) -> dict[str, tuple[int, ...]]:
    """Normalise ``{label: name}`` or ``{region name: [labels]}`` to ``{name: label ids}``."""

    def is_int(v: object) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    hint = "pass {label: name}, e.g. {1: 'anterior', 2: 'posterior'}, or {region: [labels]}, e.g. {'WT': [1, 2, 4]}"
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"classes must be a non-empty mapping; {hint}")
    if all(is_int(k) and isinstance(v, str) for k, v in classes.items()):
        if len(set(classes.values())) != len(classes):
            raise ValueError(f"class names must be unique, got {list(classes.values())}")
        return {name: (int(label),) for label, name in classes.items()}
    if all(isinstance(k, str) for k in classes):
        regions = {
            k: tuple(v) if isinstance(v, Iterable) and not isinstance(v, str) else () for k, v in classes.items()
        }
        if all(ids and all(is_int(i) for i in ids) for ids in regions.values()):
            return {name: tuple(int(i) for i in ids) for name, ids in regions.items()}
    raise ValueError(f"cannot read classes {dict(classes)!r}; {hint}")


def _labels(x: Array, name: str) -> torch.Tensor:
    t = _tensor(x, name)
    if t.is_floating_point():
        rounded = t.round()
        if not torch.equal(rounded, t):
            raise ValueError(f"{name} holds non-integer values; pass a label map (argmax or round it first)")
        t = rounded
    return t.long()


def _label_pair(pred_labels: Array, gt_labels: Array) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _labels(pred_labels, "pred_labels"), _labels(gt_labels, "gt_labels")
    _check_pair(p, g, ("pred_labels", "gt_labels"))
    return p, g.to(p.device)


def _region_mask(labels: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    return labels == ids[0] if len(ids) == 1 else torch.isin(labels, torch.tensor(ids, device=labels.device))


def case_metrics(
    pred_labels: Array,
    gt_labels: Array,
    classes: ClassSpec,
    spacing: float | Sequence[float],
    nsd_tolerance_mm: float = 2.0,
) -> list[dict[str, str | float | int]]:
    """Dice, HD95 and NSD of one case, one row per class or region.

    Args:
        pred_labels, gt_labels: integer label maps of the same 2D/3D shape, no channel axis (float arrays
            holding whole numbers, as some NIfTI files store labels, are accepted).
        classes: ``{label: name}`` (one class per label, e.g. ``{1: "anterior", 2: "posterior"}``) or
            ``{name: [labels]}`` (a region is the union of its labels, e.g. BraTS
            ``{"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}``).
        spacing: voxel size in mm per array axis, in the arrays' axis order, or one isotropic value.
        nsd_tolerance_mm: NSD tolerance in mm. Defaults to 2.0.

    Returns:
        rows ``{"class", "dice", "hd95", "nsd", "gt_voxels", "pred_voxels"}`` in the order of ``classes``;
        empty-mask conventions as in the module docstring (HD95 NaN when exactly one mask is empty).
    """
    regions = _regions(classes)
    p, g = _label_pair(pred_labels, gt_labels)
    sp, tol = _spacing(spacing, p.ndim), _check_tolerance(nsd_tolerance_mm)
    rows: list[dict[str, str | float | int]] = []
    for name, ids in regions.items():
        pm, gm = _region_mask(p, ids), _region_mask(g, ids)
        hd, surface_dice = _surface_metrics(pm, gm, sp, tol)
        rows.append(
            {
                "class": name,
                "dice": _dice(pm, gm),
                "hd95": hd,
                "nsd": surface_dice,
                "gt_voxels": int(gm.sum()),
                "pred_voxels": int(pm.sum()),
            }
        )
    return rows
