from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_cbo.transforms import IGNORE, SlicePromptsd


def test_slice_prompts_make_fixed_slots_with_ignored_absent_classes():
    image = torch.rand(3, 40, 20)
    label = torch.zeros(2, 40, 20)
    label[0, 10:30, 5:15] = 1  # class 1 present, class 2 absent
    out = SlicePromptsd(size=64)({"image": image, "label": label})
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (2, 64, 64) and out["boxes"].shape == (2, 4)
    assert torch.all(out["label"][1] == IGNORE) and torch.all(out["boxes"][1] == 0)
    # longest side 40 -> 64: scale 1.6; rows 10..29 -> 16..47, cols 5..14 -> 8..23 (x, y order)
    np.testing.assert_allclose(out["boxes"][0].numpy(), [8, 16, 23, 47], atol=1)
    assert set(torch.unique(out["label"][0]).tolist()) == {0.0, 1.0}


def test_slice_prompt_jitter_is_seeded_and_stays_inside():
    data = {"image": torch.rand(3, 32, 32), "label": torch.zeros(1, 32, 32)}
    data["label"][0, 8:20, 10:24] = 1
    boxes = [SlicePromptsd(size=64, jitter=6).set_random_state(seed)(data)["boxes"][0] for seed in (0, 0, 1)]
    assert torch.equal(boxes[0], boxes[1]) and not torch.equal(boxes[0], boxes[2])
    assert boxes[2].min() >= 0 and boxes[2].max() <= 63 and boxes[2][2] > boxes[2][0] and boxes[2][3] > boxes[2][1]


def test_slice_prompts_refuse_mismatched_grids():
    with pytest.raises(ValueError, match="same grid"):
        SlicePromptsd()({"image": torch.rand(3, 10, 10), "label": torch.zeros(1, 10, 12)})


def test_walk_boxes_are_the_neighbours_box_grown_as_a_propagation_grows_it():
    """A class on both slices gets the neighbour's tight box grown by max(margin * side, min_margin slice pixels),
    as PropagationConfig grows a propagated box; a class on this slice only keeps its own box; the target stays
    this slice's mask."""
    image, label, neighbour = torch.rand(3, 40, 50), torch.zeros(2, 40, 50), torch.zeros(2, 40, 50)
    label[0, 10:20, 10:30] = 1
    label[1, 30:36, 40:46] = 1  # class 2 here, not on the neighbour
    neighbour[0, 12:22, 14:30] = 1
    transform = SlicePromptsd(size=256, walk_key="walk")
    own = transform({"image": image, "label": label})
    walked = transform({"image": image, "label": label, "walk": neighbour})
    assert "walk" not in walked and torch.equal(walked["label"], own["label"])
    assert torch.equal(walked["boxes"][1], own["boxes"][1])
    scale = 256 / 50  # the neighbour's box cols 14..29, rows 12..21; 0.1 x 16 px < 2 px: grown by 2 slice pixels
    np.testing.assert_allclose(walked["boxes"][0].numpy(), np.array([12, 10, 32, 24]) * scale - [0, 0, 1, 1], atol=1.5)
    wide = SlicePromptsd(size=256, walk_key="walk", walk_margin=(0.5, 0.0))
    wide = wide({"image": image, "label": label, "walk": neighbour})
    assert wide["boxes"][0][0] < walked["boxes"][0][0] and wide["boxes"][0][2] > walked["boxes"][0][2]
    with pytest.raises(ValueError, match="neighbour"):
        transform({"image": image, "label": label, "walk": neighbour[:1]})
    # walk_flag_key: which boxes are the neighbour's (the segmenter's walk prompt reads them), none without one
    flagged = SlicePromptsd(size=256, walk_key="walk", walk_flag_key="walk_flag")
    assert flagged({"image": image, "label": label, "walk": neighbour})["walk_flag"].tolist() == [True, False]
    assert flagged({"image": image, "label": label})["walk_flag"].tolist() == [False, False]
    assert "walk_flag" not in walked
