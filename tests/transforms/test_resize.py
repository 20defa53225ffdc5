from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_cbo.transforms import (
    BoxFromMask,
    LabelToBinaryTargets,
    MRIPercentileScale,
    RandSampleSlicesd,
    ResizeLongestSidePad,
    ResizeLongestSidePadd,
    resized_shape,
    restore_slice,
    scale_coords,
)

ODD_SHAPES = [(35, 50), (240, 155), (1, 300), (300, 1), (7, 7), (51, 35)]


def _labels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=(1, height, width)).astype(np.uint8)


def test_resized_shape_follows_sam_rounding_and_never_collapses():
    assert resized_shape((35, 50), 256) == (179, 256)
    assert resized_shape((240, 155), 1024) == (1024, 661)
    assert resized_shape((1, 300), 256) == (1, 256)
    assert resized_shape((2, 1000), 16) == (1, 16)


def test_output_is_square_with_zero_padding_bottom_right():
    img = np.ones((3, 35, 50), dtype=np.float32)
    out = ResizeLongestSidePad(64)(img)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    h, w = resized_shape((35, 50), 64)
    np.testing.assert_allclose(out[:, :h, :w], 1, rtol=1e-6)
    assert not out[:, h:].any() and not out[:, :, w:].any()


def test_nearest_keeps_label_values_and_dtype_and_bilinear_gives_float():
    lab = _labels(35, 50)
    out = ResizeLongestSidePad(128, mode="nearest")(lab)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, 3}
    image = ResizeLongestSidePad(128)(torch.as_tensor(lab, dtype=torch.int16))
    assert type(image) is torch.Tensor and image.dtype == torch.float32


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_inverse_restores_the_exact_slice_shape(shape, mode):
    resizer = ResizeLongestSidePad(256, mode)
    img = _labels(*shape).astype(np.float32)
    restored = resizer.inverse(resizer(img), shape)
    assert restored.shape == (1, *shape)
    if mode == "nearest" and max(shape) <= 256:
        np.testing.assert_array_equal(restored, img)  # upscaling then back with nearest is lossless


def test_constant_image_survives_the_round_trip():
    resizer = ResizeLongestSidePad(32)
    img = np.full((2, 240, 155), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resizer.inverse(resizer(img), (240, 155)), img, atol=1e-6)


def test_low_resolution_logits_restore_to_the_slice_shape():
    logits = torch.randn(2, 1, 64, 64)
    assert restore_slice(logits, (35, 50)).shape == (2, 1, 35, 50)
    with pytest.raises(ValueError, match="square"):
        restore_slice(torch.zeros(1, 64, 32), (35, 50))


def test_empty_channel_stacks_resize_and_restore():
    resizer = ResizeLongestSidePad(32, "nearest")
    out = resizer(np.zeros((0, 35, 50), dtype=np.float32))
    assert out.shape == (0, 32, 32) and resizer.inverse(out, (35, 50)).shape == (0, 35, 50)


def test_scale_coords_maps_points_and_boxes_and_back():
    box = np.array([[0.0, 0.0, 49.0, 34.0]])
    h, w = resized_shape((35, 50), 256)
    np.testing.assert_allclose(scale_coords(box, (35, 50), 256), [[0, 0, 49 * w / 50, 34 * h / 35]], rtol=1e-6)
    points = torch.tensor([[[3.0, 30.0], [49.0, 0.0]]])
    back = scale_coords(scale_coords(points, (35, 50), 256), (35, 50), 256, inverse=True)
    torch.testing.assert_close(back, points)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\] or boxes \[\.\.\., 4\]"):
        scale_coords(np.zeros((1, 3)), (35, 50), 256)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="choose 'bilinear'"):
        ResizeLongestSidePad(mode="bicubic")
    with pytest.raises(ValueError, match="target"):
        ResizeLongestSidePad(0)
    with pytest.raises(ValueError, match=r"slice \[C, H, W\]"):
        ResizeLongestSidePad()(np.zeros((35, 50)))


def test_dictionary_version_matches_array_records_size_and_inverts():
    image = np.random.default_rng(0).normal(size=(3, 35, 50)).astype(np.float32)
    label = _labels(35, 50)
    resizer = ResizeLongestSidePadd(["image", "label"], target=64, mode=["bilinear", "nearest"])
    out = resizer({"image": image, "label": label})
    np.testing.assert_array_equal(out["image"], ResizeLongestSidePad(64)(image))
    np.testing.assert_array_equal(out["label"], ResizeLongestSidePad(64, "nearest")(label))
    assert out["image_original_size"] == (35, 50) and out["label_original_size"] == (35, 50)
    restored = resizer.inverse(out)
    assert restored["image"].shape == (3, 35, 50)
    np.testing.assert_array_equal(restored["label"], label)


@settings(max_examples=50, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), target=st.integers(1, 300))
def test_round_trip_restores_shape_for_any_size(height, width, target):
    lab = _labels(height, width, seed=height * 301 + width)
    for mode in ("bilinear", "nearest"):
        resizer = ResizeLongestSidePad(target, mode)
        out = resizer(lab)
        assert out.shape == (1, target, target)
        restored = resizer.inverse(out, (height, width))
        assert restored.shape == (1, height, width)
        if mode == "nearest" and target >= max(height, width):
            np.testing.assert_array_equal(restored, lab)


def test_real_hippocampus_boxes_of_resized_targets_match_scaled_boxes(hippocampus):
    data = {"image": MRIPercentileScale()(hippocampus["image"]), "label": hippocampus["label"]}
    slices = RandSampleSlicesd(["image", "label"], "label", num_samples=4, min_foreground=10).set_random_state(0)(data)
    for sample in slices:
        targets, _ = LabelToBinaryTargets()(sample["label"])
        size = targets.shape[-2:]
        resized = ResizeLongestSidePadd(["image", "label"], 256, mode=["bilinear", "nearest"])(
            {"image": sample["image"], "label": targets}
        )
        assert resized["image"].shape == (1, 256, 256) and 0 <= resized["image"].min() <= resized["image"].max() <= 1
        scaled = scale_coords(BoxFromMask()(targets), size, 256)
        h, w = resized_shape(size, 256)
        tolerance = max(h / size[0], w / size[1]) + 1  # one original pixel, in model pixels, plus rounding
        np.testing.assert_allclose(BoxFromMask()(resized["label"]), scaled, atol=tolerance)
