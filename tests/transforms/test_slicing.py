from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd

from monai_cbo.transforms import (
    RandSampleSlices,
    RandSampleSlicesd,
    canonical_orientation_transforms,
    move_slice_axis,
)


def _label() -> np.ndarray:
    """[1, 6, 5, 8] label: class 1 with 6 voxels on slices 1 and 2, class 2 with 2 voxels on slice 5."""
    lab = np.zeros((1, 6, 5, 8), dtype=np.float32)
    lab[0, :2, :3, 1:3] = 1
    lab[0, 0, :2, 5] = 2
    return lab


@pytest.mark.parametrize(
    ("axis", "shape"), [(0, (2, 4, 5, 3)), (1, (2, 3, 5, 4)), (2, (2, 3, 4, 5)), (-3, (2, 4, 5, 3))]
)
def test_move_slice_axis_puts_the_slice_axis_last_keeping_the_others_in_order(axis, shape):
    vol = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    out = move_slice_axis(vol, axis)
    assert out.shape == shape
    np.testing.assert_array_equal(out[..., 1], np.take(vol, 1, axis=1 + axis % 3))
    assert move_slice_axis(torch.as_tensor(vol), axis).shape == shape


def test_move_slice_axis_rejects_bad_axes_and_shapes():
    with pytest.raises(ValueError, match="spatial axis 0, 1, 2"):
        move_slice_axis(np.zeros((1, 2, 3, 4)), 3)
    with pytest.raises(ValueError, match=r"\[C, d0, d1, d2\]"):
        move_slice_axis(np.zeros((2, 3, 4)), 0)


def test_canonical_orientation_resamples_in_plane_and_keeps_through_plane_spacing():
    affine = torch.diag(torch.tensor([-0.8, 0.8, 3.0, 1.0], dtype=torch.float64))  # L-first: Orientation flips it
    img = MetaTensor(torch.rand(1, 50, 40, 10), affine=affine)
    chain = canonical_orientation_transforms("image", inplane_spacing=1.6)
    assert [type(t) for t in chain] == [Orientationd, Spacingd]
    out = Compose(chain)({"image": img})["image"]
    assert out.shape[-1] == 10 and out.shape[1] in (25, 26) and out.shape[2] in (20, 21)
    torch.testing.assert_close(out.pixdim, torch.tensor([1.6, 1.6, 3.0], dtype=torch.float64))
    assert out.affine[0, 0] > 0
    out = Compose(canonical_orientation_transforms("image", inplane_spacing=(0.4, 1.6), slice_axis=0))({"image": img})
    torch.testing.assert_close(out["image"].pixdim, torch.tensor([0.8, 0.4, 1.6], dtype=torch.float64))


def test_canonical_orientation_without_spacing_is_only_orientation():
    assert [type(t) for t in canonical_orientation_transforms(["image", "label"])] == [Orientationd]
    with pytest.raises(ValueError, match="positive"):
        canonical_orientation_transforms("image", inplane_spacing=0)


def test_same_seed_draws_same_slices_and_different_seed_differs(hippocampus):
    def draw(seed):
        sampler = RandSampleSlices(num_samples=6, background_ratio=0.3).set_random_state(seed)
        slices = sampler(hippocampus["image"], hippocampus["label"])
        return sampler.indices.tolist(), slices

    (first, slices_a), (again, slices_b), (other, _) = draw(7), draw(7), draw(8)
    assert first == again and first != other
    for a, b in zip(slices_a, slices_b, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_real_hippocampus_slices_hold_at_least_k_foreground_voxels(hippocampus, slice_axis):
    k = 15
    out = RandSampleSlicesd(
        ["image", "label"], "label", num_samples=20, min_foreground=k, slice_axis=slice_axis
    ).set_random_state(0)(hippocampus)
    image = move_slice_axis(hippocampus["image"], slice_axis)
    assert len(out) == 20
    for sample in out:
        label = np.rint(sample["label"])
        assert label.shape == (1, *image.shape[1:3])
        assert max((label == c).sum() for c in (1, 2)) >= k
        np.testing.assert_array_equal(sample["image"], image[..., sample["slice_index"]])


def test_classes_restrict_foreground_to_the_listed_class(hippocampus):
    sampler = RandSampleSlices(num_samples=15, min_foreground=10, classes=[2]).set_random_state(1)
    for piece in sampler(hippocampus["label"], hippocampus["label"]):
        assert (np.rint(piece) == 2).sum() >= 10


def test_background_ratio_one_draws_only_background_slices():
    sampler = RandSampleSlices(num_samples=5, background_ratio=1.0).set_random_state(0)
    sampler.randomize(_label())
    assert sorted(sampler.indices.tolist()) == [0, 3, 4, 6, 7]


def test_background_ratio_zero_draws_each_class_from_its_own_slices():
    sampler = RandSampleSlices(num_samples=40, min_foreground=2).set_random_state(0)
    sampler.randomize(_label())
    assert set(sampler.indices.tolist()) == {1, 2, 5}  # both classes are drawn, class 2 only from slice 5


def test_min_foreground_turns_small_foreground_into_background():
    sampler = RandSampleSlices(num_samples=6, min_foreground=3, background_ratio=1.0).set_random_state(0)
    sampler.randomize(_label())
    assert sorted(sampler.indices.tolist()) == [0, 3, 4, 5, 6, 7]  # slice 5 has only 2 voxels of class 2


def test_volume_without_foreground_falls_back_to_background_slices():
    sampler = RandSampleSlices(num_samples=4).set_random_state(0)
    slices = sampler(np.ones((2, 3, 4, 5)), np.zeros((1, 3, 4, 5)))
    assert len(slices) == 4 and len(set(sampler.indices.tolist())) == 4


def test_more_samples_than_slices_draws_with_replacement():
    sampler = RandSampleSlices(num_samples=25).set_random_state(0)
    sampler.randomize(_label())
    assert len(sampler.indices) == 25 and set(sampler.indices.tolist()) == {1, 2, 5}


def test_pool_large_enough_gives_distinct_slices(hippocampus):
    sampler = RandSampleSlices(num_samples=8, classes=[1]).set_random_state(3)
    sampler.randomize(hippocampus["label"])
    assert len(set(sampler.indices.tolist())) == 8


def test_dictionary_version_matches_array_version_and_copies_other_items():
    rng = np.random.default_rng(0)
    data = {"image": MetaTensor(torch.as_tensor(rng.normal(size=(2, 6, 5, 8)))), "label": _label(), "meta": [1]}
    out = RandSampleSlicesd(["image", "label"], "label", num_samples=5, background_ratio=0.4).set_random_state(4)(data)
    sampler = RandSampleSlices(num_samples=5, background_ratio=0.4).set_random_state(4)
    expected = sampler(data["image"], data["label"])
    assert [s["slice_index"] for s in out] == sampler.indices.tolist()
    for sample, piece in zip(out, expected, strict=True):
        assert type(sample["image"]) is torch.Tensor and sample["image"].shape == (2, 6, 5)
        torch.testing.assert_close(sample["image"], piece)
        np.testing.assert_array_equal(sample["label"], data["label"][..., sample["slice_index"]])
        assert sample["meta"] == [1] and sample["meta"] is not data["meta"]


def test_inputs_are_validated():
    with pytest.raises(ValueError, match=r"label must be a channel-first volume \[1, d0, d1, d2\]"):
        RandSampleSlices().randomize(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="differs from the label's"):
        RandSampleSlices()(np.zeros((1, 3, 4, 6)), np.zeros((1, 3, 4, 5)))
    with pytest.raises(ValueError, match="needs the label volume"):
        RandSampleSlices()(np.zeros((1, 3, 4, 5)))
    with pytest.raises(ValueError, match="background_ratio"):
        RandSampleSlices(background_ratio=1.5)


def test_integer_labels_with_large_values_are_counted_exactly():
    lab = np.zeros((1, 4, 4, 3), dtype=np.uint16)
    lab[0, :2, :2, 1] = 3001
    sampler = RandSampleSlices(num_samples=3, min_foreground=4, classes=[3001]).set_random_state(0)
    sampler.randomize(lab)
    assert sampler.indices.tolist() == [1, 1, 1]
