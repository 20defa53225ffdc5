from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_cbo.transforms import ToModelChannels, ToModelChannelsd


def _image(channels: int) -> np.ndarray:
    """[C, 4, 5] with channel c filled with the value c."""
    return np.arange(channels, dtype=np.float32)[:, None, None] * np.ones((1, 4, 5), dtype=np.float32)


def _values(img) -> list[float]:
    return [float(c[0, 0]) for c in img]


def test_single_channel_is_repeated_three_times():
    out = ToModelChannels()(torch.as_tensor(_image(1)))
    assert out.shape == (3, 4, 5) and _values(out) == [0, 0, 0]


def test_three_channels_are_kept_without_configuration():
    assert _values(ToModelChannels()(_image(3))) == [0, 1, 2]


@pytest.mark.parametrize(
    ("channels", "expected"), [([3], [3, 3, 3]), ([2, 0], [2, 0, 0]), ([0, 1, 3], [0, 1, 3]), ([1, 1, 0], [1, 1, 0])]
)
def test_selected_channels_keep_order_and_repeat_the_last(channels, expected):
    out = ToModelChannels(channels)(_image(4))
    assert out.shape == (3, 4, 5) and _values(out) == expected


@pytest.mark.parametrize("num", [2, 4])
def test_other_channel_counts_need_configuration(num):
    with pytest.raises(ValueError, match=f"image has {num} channels; pass channels"):
        ToModelChannels()(_image(num))


def test_out_of_range_index_names_the_channel_count():
    with pytest.raises(ValueError, match=r"has 2 channel\(s\), indices 0..1"):
        ToModelChannels([0, 2])(_image(2))


@pytest.mark.parametrize("channels", [[], [0, 1, 2, 3], [-1]])
def test_invalid_channel_lists_are_rejected(channels):
    with pytest.raises(ValueError, match="1 to 3 non-negative indices"):
        ToModelChannels(channels)


def test_dictionary_version_matches_array_version():
    img = _image(4)
    out = ToModelChannelsd("image", channels=[3, 1])({"image": img, "label": img[:1]})
    np.testing.assert_array_equal(out["image"], ToModelChannels([3, 1])(img))
    np.testing.assert_array_equal(out["label"], img[:1])


def test_real_brats_flair_t1c_fill_three_channels(brats):
    out = ToModelChannels([0, 1])(brats["image"])
    assert out.shape == (3, 240, 240, 155)
    np.testing.assert_array_equal(out[2], brats["image"][1])
