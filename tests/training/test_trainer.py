"""Tests for monai_cbo/training/trainer.py: the one training step, its optimizer and its feature cache."""

from __future__ import annotations

import pytest
import torch

from monai_cbo.losses import PromptDiceBCELoss
from monai_cbo.models import build_segmenter
from monai_cbo.networks import feature_cache
from monai_cbo.training import CachedFrontSegmenter, build_optimizer, build_trainer, train_step


def test_optimizer_groups_and_a_preset_with_nothing_to_train():
    opt = build_optimizer(build_segmenter("tiny", preset="lora_cbo"), lr=1e-3, name="adam")
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-3), pytest.approx(1e-1)]
    with pytest.raises(ValueError, match="preset 'freeze' trains no parameters"):
        build_optimizer(build_segmenter("tiny", preset="freeze"), lr=1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(build_segmenter("tiny", preset="lora"), lr=1e-3, name="lion")


def _batch(size: int, keys: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 1, size, size)
    label[:, :, 20:60, 30:90] = 1
    batch = {
        "image": torch.rand(2, 3, size, size, generator=g),
        "label": label,
        "boxes": torch.tensor([[[28.0, 18, 92, 62]]]).repeat(2, 1, 1),
    }
    return {**batch, "slice_keys": [("a", 0), ("a", 1)]} if keys else batch


def test_train_step_is_dice_bce_and_the_optimizer_step_written_out():
    """The trainer's step equals the step written by hand: forward with boxes, PromptDiceBCELoss, backward,
    build_optimizer's step; so bench, speed and the bundles, which all use it, train alike."""
    by_trainer, by_hand = (build_segmenter("tiny", preset="adapter_cbo", seed=3) for _ in range(2))
    trainer = build_trainer(by_trainer, build_optimizer(by_trainer, 1e-3), [])
    torch.manual_seed(0)  # the adapter's dropout draws from the global generator
    loss = train_step(trainer, _batch(by_trainer.img_size))["loss"]
    optimizer = build_optimizer(by_hand, 1e-3)
    torch.manual_seed(0)
    data = _batch(by_hand.img_size)
    expected = PromptDiceBCELoss()(by_hand(data["image"], boxes=data["boxes"]), data["label"])
    expected.backward()
    optimizer.step()
    assert torch.equal(loss, expected)
    assert all(torch.equal(p, q) for p, q in zip(by_trainer.parameters(), by_hand.parameters(), strict=True))


def test_cached_front_gives_the_same_step_and_fills_the_cache():
    """Same losses up to float rounding (a batch of cached features is a stacked copy, which kernels may sum in
    another order, and Adam's normalised step magnifies last-bit gradient differences in the weights;
    tests/bench checks bitwise equality on single-slice batches)."""
    plain, cached = (build_segmenter("tiny_tinyvit", preset="lora_cbo") for _ in range(2))
    cache = feature_cache()
    losses = []
    for model, kw, keys in ((plain, {}, False), (cached, {"feature_cache": cache}, True)):
        trainer = build_trainer(model, build_optimizer(model, 1e-3), [], **kw)
        losses.append([train_step(trainer, _batch(model.img_size, keys))["loss"].item() for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and len(cache) == 2 and cache.hits == 2
    assert isinstance(build_trainer(plain, build_optimizer(plain, 1e-3), []).network, type(plain))
    assert isinstance(
        build_trainer(plain, build_optimizer(plain, 1e-3), [], feature_cache=cache).network, CachedFrontSegmenter
    )
