from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_cbo.transforms import (
    BRATS_CONVENTIONS,
    BratsRegions,
    BratsRegionsd,
    ChannelsToLabelMap,
    ClassChannels,
    ClassChannelsd,
    LabelToBinaryTargets,
    LabelToBinaryTargetsd,
    RandSampleSlices,
)


def _slice() -> np.ndarray:
    """[1, 4, 5] float label with class 3 (5 px), class 1 (2 px, stored as 0.9999) and class 7 (1 px)."""
    lab = np.zeros((1, 4, 5), dtype=np.float32)
    lab[0, 0, :] = 3.0
    lab[0, 2, 1:3] = 0.9999
    lab[0, 3, 4] = 7.0
    return lab


def test_one_target_per_present_class_in_ascending_order():
    targets, ids = LabelToBinaryTargets()(_slice())
    assert targets.shape == (3, 4, 5) and targets.dtype == np.float32
    assert ids.tolist() == [1, 3, 7] and ids.dtype == np.int64
    for target, c in zip(targets, ids, strict=True):
        np.testing.assert_array_equal(target, np.rint(_slice()[0]) == c)


def test_configured_classes_absent_from_the_slice_give_no_target():
    targets, ids = LabelToBinaryTargets(classes=[7, 3, 1, 5])(_slice())
    assert ids.tolist() == [1, 3, 7] and targets.shape[0] == 3


def test_min_foreground_drops_tiny_classes():
    _, ids = LabelToBinaryTargets(min_foreground=2)(_slice())
    assert ids.tolist() == [1, 3]


def test_empty_slice_gives_zero_targets():
    targets, ids = LabelToBinaryTargets(dtype=torch.uint8)(torch.zeros(1, 4, 5))
    assert targets.shape == (0, 4, 5) and targets.dtype == torch.uint8 and ids.shape == (0,)


def test_values_outside_the_configured_classes_are_named():
    with pytest.raises(ValueError, match=r"label values \[7\] are outside the configured classes \[1, 3\]"):
        LabelToBinaryTargets(classes=[1, 3])(_slice())


def test_targets_keep_the_container_and_metadata():
    meta = MetaTensor(torch.as_tensor(_slice()), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    targets, ids = LabelToBinaryTargets()(meta)
    assert isinstance(targets, MetaTensor) and targets.affine[0, 0] == 3
    assert type(ids) is torch.Tensor and ids.tolist() == [1, 3, 7]


def test_label_to_binary_targets_dictionary_matches_array():
    out = LabelToBinaryTargetsd("label", classes=[1, 3, 7])({"label": _slice()})
    targets, ids = LabelToBinaryTargets(classes=[1, 3, 7])(_slice())
    np.testing.assert_array_equal(out["label"], targets)
    np.testing.assert_array_equal(out["label_class_ids"], ids)


@pytest.mark.parametrize(
    ("convention", "expected"),
    [
        ("2015", [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]),
        ("2023", [[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]),
        (2021, [[0, 1, 1, 0, 1], [0, 1, 0, 0, 1], [0, 0, 0, 0, 1]]),
    ],
)
def test_brats_conventions_give_wt_tc_et(convention, expected):
    labels = {"2015": [0, 1, 2, 3, 4], "2023": [0, 1, 2, 3, 0], "2021": [0, 1, 2, 0, 4]}[str(convention)]
    out = BratsRegions(convention)(np.array([labels], dtype=np.float32))
    assert BratsRegions(convention).regions == ["WT", "TC", "ET"]
    np.testing.assert_array_equal(out, expected)


def test_brats_labels_outside_the_convention_are_named():
    with pytest.raises(ValueError, match=r"label values \[3\] are outside the configured classes \[1, 2, 4\]"):
        BratsRegions("2021")(np.array([[0, 1, 3, 4]]))


def test_unknown_brats_convention_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of 2015, 2021, 2023"):
        BratsRegions("2018")


def test_custom_mapping_sets_regions_and_their_order():
    regions = BratsRegions({"ET": [3], "TC": [1, 3]})
    assert regions.regions == ["ET", "TC"]
    np.testing.assert_array_equal(regions(torch.tensor([[0, 1, 3]])), [[0, 0, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match="regions with label values"):
        BratsRegions({"WT": []})


def test_brats_regions_dictionary_matches_array():
    lab = np.array([[[0, 1], [2, 4]]], dtype=np.float32)
    out = BratsRegionsd("label", convention="2021", dtype=np.uint8)({"label": lab})["label"]
    np.testing.assert_array_equal(out, BratsRegions("2021", dtype=np.uint8)(lab))
    assert out.dtype == np.uint8


def test_real_brats_2015_regions_are_nested(brats):
    regions = BratsRegions("2015", dtype=bool)(brats["label"])
    wt, tc, et = regions
    assert regions.shape == (3, 240, 240, 155) and et.any()
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    np.testing.assert_array_equal(wt, brats["label"][0] > 0)
    assert set(BRATS_CONVENTIONS) == {"2015", "2021", "2023"}


def test_real_hippocampus_float_label_slices_give_classes_1_and_2(hippocampus):
    slices = RandSampleSlices(num_samples=5, min_foreground=10).set_random_state(0)(
        hippocampus["label"], hippocampus["label"]
    )
    for piece in slices:
        targets, ids = LabelToBinaryTargets(classes=[1, 2])(piece)
        assert set(ids.tolist()) <= {1, 2} and len(ids) >= 1
        assert targets.sum(axis=(1, 2)).min() >= 1


def test_class_channels_keep_every_configured_class_and_ignore_others():
    label = np.zeros((1, 4, 5), dtype=np.float32)
    label[0, 1, 1] = 5.0
    label[0, 2, 2] = 1.0000001  # float labels are rounded
    label[0, 3, 3] = 77  # not configured: background
    out = ClassChannels([1, 2, 5])(label)
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32
    assert out[0, 2, 2] == 1 and out[1].sum() == 0 and out[2, 1, 1] == 1 and out.sum() == 2
    meta = MetaTensor(torch.as_tensor(label), affine=torch.diag(torch.tensor([2.0, 2, 1, 1])))
    d = ClassChannelsd("label", [1])({"label": meta})
    assert isinstance(d["label"], MetaTensor) and torch.equal(d["label"].affine, meta.affine)
    with pytest.raises(ValueError, match="at least one"):
        ClassChannels([])


def test_channels_to_label_map_rebuilds_the_brats_2021_convention():
    wt, tc, et = (torch.zeros(3, 3) for _ in range(3))
    wt[:, :] = 1
    tc[1:, 1:] = 1
    et[2, 2] = 1
    labels = ChannelsToLabelMap([2, 1, 4])(torch.stack([wt, tc, et]))
    np.testing.assert_array_equal(labels[0], [[2, 2, 2], [2, 1, 1], [2, 1, 4]])
    with pytest.raises(ValueError, match="3 channels but 2 label values"):
        ChannelsToLabelMap([1, 2])(torch.stack([wt, tc, et]))
