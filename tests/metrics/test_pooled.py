"""Tests for monai_cbo/metrics/pooled.py: the paper's Dice pooled over 2D slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_cbo.metrics import PooledDice, case_metrics, pooled_dice_2d


def two_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """A small structure segmented badly and a large one segmented perfectly (label 1), slices on axis -1."""
    small_gt, small_pred = np.zeros((6, 6, 4), np.int64), np.zeros((6, 6, 4), np.int64)
    small_gt[1:3, 1:3, 1:3] = 1  # 8 voxels
    small_pred[2:4, 1:3, 1:3] = 1  # 8 voxels, 4 shared
    small_pred[0, 0, 3] = 1  # a false positive on a slice without ground truth
    large = np.zeros((6, 6, 4), np.int64)
    large[:, :, 1:] = 1  # 108 voxels
    return [(small_pred, small_gt), (large, large.copy())]


def test_pooled_dice_equals_a_hand_computation_over_slices() -> None:
    cases = two_cases()
    inter = sum(((p[..., s] == 1) & (g[..., s] == 1)).sum() for p, g in cases for s in range(4))
    total = sum((p[..., s] == 1).sum() + (g[..., s] == 1).sum() for p, g in cases for s in range(4))
    assert (inter, total) == (4 + 108, 9 + 8 + 216)
    assert pooled_dice_2d(cases, {1: "fg"}) == {"fg": 2 * inter / total}


def test_pooled_dice_differs_from_the_mean_of_3d_dice() -> None:
    cases = two_cases()
    mean_3d = np.mean([case_metrics(p, g, {1: "fg"}, 1.0)[0]["dice"] for p, g in cases])
    assert mean_3d == pytest.approx((2 * 4 / 17 + 1.0) / 2)
    assert abs(pooled_dice_2d(cases, {1: "fg"})["fg"] - mean_3d) > 0.2


def test_gt_slices_only_drops_slices_without_ground_truth() -> None:
    pooled = PooledDice({1: "fg"}, axis=-1, gt_slices_only=True)
    for pred, gt in two_cases():
        pooled.update(torch.as_tensor(pred), gt)
    assert pooled.compute() == {"fg": 2 * (4 + 108) / (8 + 8 + 216)}


def test_accumulator_fed_volume_by_volume_matches_the_function_and_resets() -> None:
    classes = {"fg": [1], "bg_or_fg": [0, 1]}
    pooled = PooledDice(classes)
    with pytest.raises(ValueError, match="before any update"):
        pooled.compute()
    for pred, gt in two_cases():
        pooled.update(pred, gt)
    assert pooled.volumes == 2 and pooled.compute() == pooled_dice_2d(two_cases(), classes)
    assert pooled.compute()["bg_or_fg"] == 1.0
    pooled.reset()
    pooled.update(np.zeros((3, 3), np.int64), np.zeros((3, 3), np.int64))
    assert pooled.compute()["fg"] == 1.0  # absent everywhere: the both-empty convention


def test_update_rejects_mismatched_shapes_and_a_bad_slice_axis() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 3\)"):
        PooledDice({1: "fg"}).update(np.zeros((4, 4, 4)), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="axis 3"):
        PooledDice({1: "fg"}, axis=3, gt_slices_only=True).update(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
