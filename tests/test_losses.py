from __future__ import annotations

import pytest
import torch

from monai_cbo.losses import PromptDiceBCELoss
from monai_cbo.networks import SegmenterOutput
from monai_cbo.transforms import IGNORE


def test_padded_prompt_slots_do_not_count():
    loss = PromptDiceBCELoss()
    logits = torch.randn(2, 3, 1, 8, 8)
    target = (torch.rand(2, 3, 8, 8) > 0.5).float()
    padded = target.clone()
    padded[:, 2] = IGNORE
    logits_changed = logits.clone()
    logits_changed[:, 2] += 100  # whatever the model says for a padded slot
    assert loss(SegmenterOutput(logits_changed, None), padded) == pytest.approx(float(loss(logits, padded)))
    assert loss(logits[:, :2], target[:, :2]) == pytest.approx(float(loss(logits, padded)))


def test_perfect_prediction_scores_near_zero_and_all_padded_is_zero_with_a_graph():
    loss = PromptDiceBCELoss()
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    assert loss((target * 2 - 1) * 50, target) < 1e-3
    logits = torch.randn(1, 1, 1, 8, 8, requires_grad=True)
    value = loss(logits, torch.full((1, 1, 8, 8), IGNORE))
    value.backward()
    assert value == 0 and logits.grad is not None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        PromptDiceBCELoss()(torch.randn(1, 2, 1, 8, 8), torch.zeros(1, 2, 4, 4))
