"""Tests for monai_cbo/metrics/segmentation.py: Dice, HD95, NSD and per-class rows in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from realdata import shared_data

from monai_cbo.metrics import case_metrics, dice_3d, hd95, nsd


def cube(lo: tuple[int, ...], size: int, shape: tuple[int, ...] = (12, 12, 14)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(s, s + size) for s in lo)] = True
    return out


def same_as_neighbours(labels: np.ndarray) -> np.ndarray:
    """Where all 6 face neighbours hold the voxel's own value (beyond the array = 0), by explicit rolls."""
    padded, core = np.pad(labels, 1), tuple(slice(1, -1) for _ in labels.shape)
    return np.all([np.roll(padded, s, a)[core] == labels for a in range(labels.ndim) for s in (-1, 1)], axis=0)


def surface_reference(mask: np.ndarray) -> np.ndarray:
    return mask & ~same_as_neighbours(mask)


def brute_force(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tol: float) -> tuple[float, float]:
    sp, sg = (torch.from_numpy(np.argwhere(surface_reference(m)) * np.asarray(spacing)) for m in (pred, gt))
    d = torch.cdist(sp, sg, compute_mode="donot_use_mm_for_euclid_dist")
    d_pg, d_gp = d.amin(1).numpy(), d.amin(0).numpy()
    hd = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return hd, ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / (d_pg.size + d_gp.size)


def erode(labels: np.ndarray) -> np.ndarray:
    """Each label eroded by one voxel (6-neighbourhood)."""
    return labels * same_as_neighbours(labels)


@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_dice_of_two_cubes_with_known_overlap_is_exact(to) -> None:
    a, b = cube((2, 2, 2), 4), cube((2, 2, 4), 4)  # 64 voxels each, 32 shared
    assert dice_3d(to(a), to(b)) == 0.5
    assert dice_3d(to(a.astype(np.uint8)), to(a)) == 1.0
    assert dice_3d(a[..., 3], b[..., 3]) == 0.0 and dice_3d(a[..., 4], b[..., 4]) == 1.0


def test_hd95_of_shifted_cubes_is_the_shift_in_mm_with_anisotropic_spacing() -> None:
    a, b = cube((2, 2, 2), 6), cube((2, 2, 4), 6)  # shifted by 2 slices of 3 mm
    assert hd95(a, b, (1.0, 1.0, 3.0)) == pytest.approx(6.0, abs=1e-9)
    assert hd95(b, a, (1.0, 1.0, 3.0)) == pytest.approx(6.0, abs=1e-9)
    assert hd95(a, a, (1.0, 1.0, 3.0)) == 0.0
    assert hd95(a.transpose(2, 0, 1), b.transpose(2, 0, 1), (3.0, 1.0, 1.0)) == pytest.approx(6.0, abs=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 2.5)])
def test_hd95_and_nsd_match_brute_force_on_random_masks(spacing) -> None:
    gen = torch.Generator().manual_seed(1)
    pred, gt = (torch.rand((17, 23, 11), generator=gen) > t for t in (0.6, 0.7))
    pred[:5] = False  # an offset so the two surfaces differ in extent
    expected = brute_force(pred.numpy(), gt.numpy(), spacing, 2.0)
    assert hd95(pred, gt, spacing) == pytest.approx(expected[0], rel=1e-5)  # MONAI's distances are float32
    assert nsd(pred, gt, spacing, 2.0) == pytest.approx(expected[1], rel=1e-6)


def test_nsd_is_one_for_identical_masks_and_drops_beyond_tolerance() -> None:
    a = cube((2, 2, 2), 6)
    assert nsd(a, a, (1.0, 1.0, 3.0), 0.0) == 1.0
    assert nsd(a, cube((2, 2, 3), 6), (1.0, 1.0, 1.0), 2.0) == 1.0  # 1 mm shift within 2 mm
    assert nsd(a, cube((2, 2, 4), 6), (1.0, 1.0, 3.0), 2.0) < 1.0  # 6 mm shift beyond 2 mm


def test_empty_mask_conventions() -> None:
    empty, a = np.zeros((8, 8, 8), bool), cube((2, 2, 2), 3, (8, 8, 8))
    assert (dice_3d(empty, empty), hd95(empty, empty, 1.0), nsd(empty, empty, 1.0, 2.0)) == (1.0, 0.0, 1.0)
    for pred, gt in ((a, empty), (empty, a)):
        assert dice_3d(pred, gt) == 0.0 and nsd(pred, gt, 1.0, 2.0) == 0.0
        assert math.isnan(hd95(pred, gt, 1.0))


def test_invalid_input_raises_value_error_naming_the_problem() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        dice_3d(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="binary mask"):
        hd95(np.full((4, 4, 4), 2), np.zeros((4, 4, 4)), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        nsd(np.ones((4, 4, 4)), np.ones((4, 4, 4)), 1.0, -1.0)


def test_case_metrics_gives_one_row_per_class() -> None:
    gt = np.zeros((10, 10, 10), np.int64)
    gt[1:5, 1:5, 1:5], gt[6:9, 6:9, 6:9] = 1, 2
    pred = gt.copy()
    pred[6:9, 6:9, 6] = 0  # class 2 loses one slice of 9 voxels
    rows = case_metrics(pred.astype(np.float32), torch.as_tensor(gt), {1: "a", 2: "b", 3: "absent"}, (1.0, 1.0, 2.0))
    assert [r["class"] for r in rows] == ["a", "b", "absent"]
    assert rows[0] == {"class": "a", "dice": 1.0, "hd95": 0.0, "nsd": 1.0, "gt_voxels": 64, "pred_voxels": 64}
    assert rows[1]["dice"] == pytest.approx(2 * 18 / 45) and (rows[1]["gt_voxels"], rows[1]["pred_voxels"]) == (27, 18)
    assert rows[1]["hd95"] == pytest.approx(2.0) and rows[1]["nsd"] == 1.0
    assert rows[2] == {"class": "absent", "dice": 1.0, "hd95": 0.0, "nsd": 1.0, "gt_voxels": 0, "pred_voxels": 0}


def test_case_metrics_scores_regions_as_unions_of_labels() -> None:
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[2:10, 2:10, 2:10], gt[4:8, 4:8, 4:8], gt[5:7, 5:7, 5:7] = 2, 1, 4  # edema, core, enhancing
    pred = (gt > 0).astype(np.uint8)  # the whole tumour, all called label 1
    rows = {r["class"]: r for r in case_metrics(pred, gt, {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}, 1.0)}
    assert rows["WT"]["dice"] == 1.0 and rows["WT"]["gt_voxels"] == 512
    assert (rows["TC"]["gt_voxels"], rows["TC"]["pred_voxels"]) == (64, 512)
    assert rows["TC"]["dice"] == pytest.approx(2 * 64 / 576)
    assert rows["ET"]["dice"] == 0.0 and math.isnan(rows["ET"]["hd95"]) and rows["ET"]["nsd"] == 0.0


def test_case_metrics_rejects_bad_class_specs_and_label_maps() -> None:
    labels = np.zeros((4, 4, 4), np.int64)
    for bad in ({}, {1: "a", 2: "a"}, {"WT": []}, {"WT": "124"}, {1: "a", "TC": [1]}):
        with pytest.raises(ValueError, match="class"):
            case_metrics(labels, labels, bad, 1.0)
    with pytest.raises(ValueError, match="non-integer"):
        case_metrics(labels + 0.5, labels, {1: "a"}, 1.0)
    with pytest.raises(ValueError, match=r"pred_labels shape \(4, 4, 4\).*gt_labels shape \(4, 4\)"):
        case_metrics(labels, labels[0], {1: "a"}, 1.0)


def test_case_metrics_on_a_real_hippocampus_label() -> None:
    path = shared_data("Task04_Hippocampus", "labelsTr", "hippocampus_003.nii.gz")
    import nibabel as nib

    image = nib.load(path)
    gt = np.rint(np.asanyarray(image.dataobj)).astype(np.int64)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    classes = {1: "anterior", 2: "posterior"}
    for row in case_metrics(gt, gt, classes, spacing):
        assert (row["dice"], row["hd95"], row["nsd"]) == (1.0, 0.0, 1.0) and row["gt_voxels"] > 0
    for row in case_metrics(erode(gt), gt, classes, spacing):
        assert 0.0 < row["dice"] < 1.0 and row["hd95"] >= min(spacing) and row["pred_voxels"] < row["gt_voxels"]


def test_matches_monai() -> None:
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    gen = torch.Generator().manual_seed(2)
    pred, gt = (torch.rand((15, 19, 9), generator=gen) > 0.6 for _ in range(2))
    spacing = (0.7, 1.1, 2.5)
    one_hot = {"y_pred": pred[None, None].float(), "y": gt[None, None].float(), "include_background": True}
    expected_hd = compute_hausdorff_distance(**one_hot, percentile=95, spacing=spacing).item()
    expected_nsd = compute_surface_dice(**one_hot, class_thresholds=[2.0], spacing=spacing).item()
    assert hd95(pred, gt, spacing) == pytest.approx(expected_hd, rel=1e-5)
    assert nsd(pred, gt, spacing, 2.0) == pytest.approx(expected_nsd, rel=1e-6)
