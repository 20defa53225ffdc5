from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_cbo.transforms import CTWindow, CTWindowd, MRIPercentileScale, MRIPercentileScaled


def test_ct_window_clips_and_scales_hu_to_unit_range():
    hu = np.array([[-1000, -500, 250, 1000, 3000]], dtype=np.int16)
    out = CTWindow(-500, 1000)(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 0.5, 1, 1]])


def test_ct_window_maps_nan_to_low_and_clips_inf():
    x = torch.tensor(
        [[float("nan"), float("inf"), -float("inf"), 40.0]]
    )  # 40 HU: the middle of the default window (-160, 240)
    out = CTWindow()(x)
    assert not out.isnan().any()
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0, 0.5]]))


def test_ct_window_rejects_inverted_window():
    with pytest.raises(ValueError, match="a_min < a_max"):
        CTWindow(a_min=400, a_max=-100)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_percentile_scale_gives_float32_unit_range_for_any_dtype(dtype):
    x = np.random.default_rng(0).integers(0, 120, size=(2, 9, 8, 7)).astype(dtype)
    out = MRIPercentileScale(0, 100)(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    for channel in out:
        assert channel.min() == 0 and channel.max() == 1


@pytest.mark.parametrize("channel_wise", [True, False])
def test_constant_image_becomes_zeros(channel_wise):
    for value in (0, 7, -3.5):
        out = MRIPercentileScale(channel_wise=channel_wise)(np.full((2, 4, 5), value, dtype=np.float32))
        np.testing.assert_array_equal(out, np.zeros((2, 4, 5), dtype=np.float32))


def test_percentiles_are_taken_over_finite_values_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 1000)).astype(np.float32)
    dirty = x.copy()
    dirty[0, :50], dirty[0, 50:60], dirty[0, 60:70] = np.nan, np.inf, -np.inf
    lo, hi = np.percentile(dirty[0, 70:], [2, 98])
    out = MRIPercentileScale(2, 98)(dirty)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 70:], np.clip((dirty[0, 70:] - lo) / (hi - lo), 0, 1), atol=1e-5)
    np.testing.assert_array_equal(out[0, :70], [0] * 50 + [1] * 10 + [0] * 10)


def test_all_nan_channel_becomes_zeros_without_touching_other_channels():
    x = np.stack([np.full((3, 3), np.nan), np.arange(9.0).reshape(3, 3)])
    out = MRIPercentileScale(0, 100)(x)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_allclose(out[1], np.arange(9.0).reshape(3, 3) / 8)


def test_channel_wise_scales_each_channel_on_its_own():
    x = np.stack([np.arange(10.0), 100 * np.arange(10.0)])
    np.testing.assert_allclose(MRIPercentileScale(0, 100, channel_wise=True)(x), np.stack([np.arange(10) / 9] * 2))
    joint = MRIPercentileScale(0, 100, channel_wise=False)(x)
    np.testing.assert_allclose(joint, x / 900, rtol=1e-6)


def test_nonzero_ignores_background_in_percentiles_and_keeps_it_zero():
    x = np.zeros((1, 100), dtype=np.float32)
    x[0, :10] = np.linspace(-2, 2, 10)
    x[0, 4] = 0.0  # an interior zero stays background too
    out = MRIPercentileScale(0, 100, nonzero=True)(x)
    np.testing.assert_array_equal(out[0, 10:], 0)
    assert out[0, 0] == 0 and out[0, 9] == 1 and out[0, 4] == 0


def test_container_type_is_kept_numpy_torch_and_metatensor():
    x = np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4)
    assert isinstance(MRIPercentileScale()(x), np.ndarray)
    out = MRIPercentileScale()(torch.as_tensor(x))
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    meta = MetaTensor(torch.as_tensor(x), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = CTWindow()(meta)
    assert isinstance(out, MetaTensor) and out.affine[0, 0] == 2 and out.dtype == torch.float32


def test_dictionary_versions_match_array_versions():
    x = np.random.default_rng(2).normal(size=(2, 6, 7, 8)) * 300
    d = {"image": x, "other": 1}
    np.testing.assert_array_equal(CTWindowd("image", -100, 300)(d)["image"], CTWindow(-100, 300)(x))
    out = MRIPercentileScaled("image", 1, 99, channel_wise=False, nonzero=True)(d)
    np.testing.assert_array_equal(out["image"], MRIPercentileScale(1, 99, False, True)(x))
    assert out["other"] == 1


@pytest.mark.parametrize("case", ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz"])
def test_real_hippocampus_uint8_and_float_cases_scale_to_unit_range(case, load_volume):
    image = load_volume("Task04_Hippocampus", "imagesTr", case)
    out = MRIPercentileScale()(image)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert 0.05 < (out == 1).mean() * 100 < 1.5  # about 0.5 % of voxels sit above the upper percentile


def test_real_ct_in_hu_windows_to_unit_range(load_volume):
    ct = load_volume("TotalSegmentator_examples", "example_ct_sm.nii.gz")
    assert ct.dtype == np.int16
    out = CTWindow()(ct)
    assert out.min() == 0 and out.max() == 1 and 0 < out.mean() < 1
