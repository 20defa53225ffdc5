from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_cbo.transforms import BoxFromMask, BoxFromMaskd, PointsFromMask, PointsFromMaskd


def _mask(shape=(20, 30), rows=(3, 7), cols=(10, 15)) -> np.ndarray:
    """[1, H, W] mask with foreground rows[0]..rows[1]-1, cols[0]..cols[1]-1."""
    mask = np.zeros((1, *shape), dtype=np.uint8)
    mask[0, rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


def test_box_is_tight_xyxy_with_inclusive_max():
    np.testing.assert_array_equal(BoxFromMask()(_mask()), [[10, 3, 14, 6]])  # x = column, y = row
    one_pixel = np.zeros((1, 9, 9))
    one_pixel[0, 4, 7] = 1
    np.testing.assert_array_equal(BoxFromMask()(one_pixel), [[7, 4, 7, 4]])


def test_one_box_per_mask_in_the_input_container():
    masks = torch.as_tensor(np.concatenate([_mask(), _mask(rows=(0, 20), cols=(29, 30))]))
    boxes = BoxFromMask()(masks)
    assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
    assert boxes.tolist() == [[10, 3, 14, 6], [29, 0, 29, 19]]
    assert BoxFromMask()(np.zeros((0, 5, 5))).shape == (0, 4)


def test_empty_mask_and_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="mask 1 of 2 is empty"):
        BoxFromMask()(np.concatenate([_mask(), np.zeros((1, 20, 30))]))
    with pytest.raises(ValueError, match=r"masks \[P, H, W\]"):
        BoxFromMask()(np.zeros((20, 30)))
    with pytest.raises(ValueError, match="jitter"):
        BoxFromMask(jitter=1.5)


def test_jitter_is_seeded():
    masks = np.concatenate([_mask()] * 4)

    def jittered(seed):
        return BoxFromMask(jitter=3).set_random_state(seed)(masks)

    np.testing.assert_array_equal(jittered(1), jittered(1))
    assert not np.array_equal(jittered(1), jittered(2))
    assert np.abs(jittered(1) - BoxFromMask()(masks)).max() <= 3


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    data=st.data(),
    jitter=st.integers(0, 25),
    seed=st.integers(0, 2**31 - 1),
)
def test_jittered_boxes_stay_inside_the_image_non_empty_and_cover_the_centre(height, width, data, jitter, seed):
    r0 = data.draw(st.integers(0, height - 1))
    r1 = data.draw(st.integers(r0 + 1, height))
    c0 = data.draw(st.integers(0, width - 1))
    c1 = data.draw(st.integers(c0 + 1, width))
    mask = _mask((height, width), (r0, r1), (c0, c1))
    x_min, y_min, x_max, y_max = BoxFromMask(jitter).set_random_state(seed)(mask)[0]
    assert 0 <= x_min <= x_max <= width - 1 and 0 <= y_min <= y_max <= height - 1
    assert x_min <= (c0 + c1 - 1) / 2 <= x_max and y_min <= (r0 + r1 - 1) / 2 <= y_max
    assert max(abs(x_min - c0), abs(y_min - r0), abs(x_max - c1 + 1), abs(y_max - r1 + 1)) <= jitter


def test_points_fall_on_foreground_and_background_with_their_labels():
    mask = _mask()
    coords, labels = PointsFromMask(num_pos=3, num_neg=2).set_random_state(0)(mask)
    assert coords.shape == (1, 5, 2) and coords.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, 1, 1, 0, 0]])
    x, y = coords[0].astype(int).T
    np.testing.assert_array_equal(mask[0, y, x], [1, 1, 1, 0, 0])
    assert len({(a, b) for a, b in zip(x[:3], y[:3], strict=True)}) == 3


def test_points_are_seeded_and_drawn_with_replacement_when_needed():
    one_pixel = _mask(rows=(2, 3), cols=(5, 6))
    coords, _ = PointsFromMask(num_pos=4).set_random_state(0)(one_pixel)
    np.testing.assert_array_equal(coords[0], [[5, 2]] * 4)
    masks = np.concatenate([_mask()] * 3)
    a, b, c = (PointsFromMask(2, 2).set_random_state(s)(masks)[0] for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_points_need_the_pixels_they_are_asked_for():
    with pytest.raises(ValueError, match="mask 0 has no foreground pixels"):
        PointsFromMask(1)(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="mask 0 has no background pixels"):
        PointsFromMask(1, 1)(np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="at least one point"):
        PointsFromMask(0, 0)


def test_dictionary_versions_match_array_versions():
    masks = torch.as_tensor(np.concatenate([_mask(), _mask(rows=(10, 18))]))
    d = BoxFromMaskd("label", jitter=4).set_random_state(3)({"label": masks})
    torch.testing.assert_close(d["label_box"], BoxFromMask(4).set_random_state(3)(masks))
    d = PointsFromMaskd("label", num_pos=2, num_neg=1).set_random_state(3)(d)
    coords, labels = PointsFromMask(2, 1).set_random_state(3)(masks)
    torch.testing.assert_close(d["label_points"], coords)
    torch.testing.assert_close(d["label_point_labels"], labels)
