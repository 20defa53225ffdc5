"""Tests for monai_cbo/training/interaction.py: simulated clicks in training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_cbo.models import build_segmenter
from monai_cbo.training import (
    CachedFrontSegmenter,
    Interaction,
    InteractionDraw,
    build_optimizer,
    build_trainer,
    error_click,
    simulate_rounds,
    train_step,
)
from monai_cbo.transforms.training import IGNORE


def _square(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_a_click_lands_in_the_largest_error_and_says_what_it_is():
    truth = _square((64, 64), 10, 40, 10, 40)
    leak = truth | _square((64, 64), 45, 60, 5, 60)  # a 15 x 55 leak beside a 2-pixel-row miss
    leak[10:12, 10:40] = False
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y, label = error_click(leak, truth, rng)
        assert label == 0 and 45 <= y < 60 and 5 <= x < 60  # background, inside the leak
    miss = truth & ~_square((64, 64), 15, 35, 15, 35)  # a hole of 20 x 20 in the middle
    x, y, label = error_click(miss, truth, rng)
    assert label == 1 and 15 <= y < 35 and 15 <= x < 35
    assert error_click(truth, truth, rng) is None
    start = error_click(np.zeros_like(truth), truth, rng)  # nothing predicted: a click inside the structure
    assert start[2] == 1 and truth[int(start[1]), int(start[0])]


def test_clicks_favour_the_middle_of_the_error():
    """Drawn in proportion to the squared distance from the region's border: the clicks' mean distance from the
    border is well above a uniform draw's."""
    from scipy import ndimage

    truth = _square((80, 80), 10, 70, 10, 70)
    depth = ndimage.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1]
    rng = np.random.default_rng(1)
    clicks = [error_click(np.zeros_like(truth), truth, rng) for _ in range(300)]
    drawn = np.mean([depth[int(y), int(x)] for x, y, _ in clicks])
    assert drawn > 1.4 * depth[truth].mean()


class _Decoder:
    """A decoder that leaks: every prompt's mask is the target plus a band below it; counts its calls."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target, self.calls = target, []

    def __call__(self, **prompt):
        self.calls.append(prompt)
        assert not torch.is_grad_enabled()
        mask = (self.target > 0.5).float()
        mask[..., 50:60, :] = 1.0
        return (mask * 20 - 10)[:, :, None]


def _draw(rounds, click_start=False, mask_prompt=False) -> tuple[InteractionDraw, torch.Tensor]:
    target = torch.zeros(2, 2, 64, 64)
    target[:, :, 10:40, 10:40] = 1
    target[1, 1] = IGNORE  # a padded prompt slot
    draw = InteractionDraw(rounds=rounds, click_start=click_start, mask_prompt=mask_prompt, seed=0, target=target)
    return draw, target


def test_rounds_add_a_click_each_from_the_current_error():
    draw, target = _draw(rounds=3, mask_prompt=True)
    boxes = torch.tensor([10.0, 10, 40, 40]).expand(2, 2, 4)
    decoder = _Decoder(target)
    prompt = simulate_rounds(decoder, boxes, draw, low_res_size=32)
    assert len(decoder.calls) == 3  # one decode per round, the trained decode is the caller's
    assert prompt["boxes"] is boxes and prompt["points"].shape == (2, 2, 3, 2)
    labels, points = prompt["point_labels"], prompt["points"]
    assert (labels[1, 1] == -1).all()  # the padded slot: SAM's "not a point"
    valid = labels[torch.tensor([[True, True], [True, False]])]
    assert (valid == 0).all()  # every round: a background click where the decoder leaks
    ys = points[..., 1][torch.tensor([[True, True], [True, False]])]
    assert ((ys >= 50) & (ys < 60)).all()
    assert prompt["mask_inputs"].shape == (2, 2, 1, 32, 32)  # the last round's logits, at the mask prompt's size
    assert decoder.calls[0].get("mask_inputs") is None and decoder.calls[1]["mask_inputs"] is not None


def test_a_click_can_start_the_object_without_a_box():
    draw, target = _draw(rounds=0, click_start=True)
    prompt = simulate_rounds(_Decoder(target), torch.zeros(2, 2, 4), draw, low_res_size=64)
    assert prompt["boxes"] is None and prompt["points"].shape == (2, 2, 1, 2)
    x, y = prompt["points"][0, 0, 0].tolist()
    assert prompt["point_labels"][0, 0, 0] == 1 and 10 <= x < 40 and 10 <= y < 40
    assert "mask_inputs" not in prompt


def test_the_draws_depend_on_the_seed_and_the_step_only():
    interaction = Interaction(share=0.5, max_clicks=4, seed=7)
    rng = np.random.default_rng(0)
    draws = [interaction.draw(step, rng) for step in range(200)]
    assert draws == [interaction.draw(step, np.random.default_rng(9)) for step in range(200)]
    share = np.mean([d is not None for d in draws])
    assert 0.4 < share < 0.6
    assert {d.rounds for d in draws if d is not None} == {0, 1, 2, 3, 4}
    assert Interaction(share=0.0).draw(3, rng) is None
    with pytest.raises(ValueError, match="share: 0 .. 1"):
        Interaction(share=1.5)


def test_an_interactive_training_step_decodes_the_last_rounds_prompt_with_gradients():
    """share 1: every box step is interactive; the network (wrapped so that rounds share the step's embedding)
    encodes once per step and the trained decode gets the clicks."""
    model = build_segmenter("tiny", preset="adapter_cbo", seed=0)
    trainer = build_trainer(
        model, build_optimizer(model, 1e-3), [], interaction=Interaction(share=1.0, max_clicks=3, click_start=0.0)
    )
    assert isinstance(trainer.network, CachedFrontSegmenter)
    size = model.img_size
    label = torch.zeros(2, 1, size, size)
    label[:, :, 20:60, 30:90] = 1
    batch = {"image": torch.rand(2, 3, size, size), "label": label, "boxes": torch.tensor([[[28.0, 18, 92, 62]]] * 2)}
    encodes, decodes = [], []
    original_encode, original_decode = model.encode, model.decode
    model.encode = lambda *a, **k: encodes.append(1) or original_encode(*a, **k)
    model.decode = lambda *a, **k: decodes.append(k) or original_decode(*a, **k)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    trainer.state.iteration = 0
    for step in range(4):
        trainer.prepare_batch.step = step
        encodes.clear(), decodes.clear()
        out = train_step(trainer, batch)
        draw = Interaction(share=1.0, max_clicks=3, click_start=0.0).draw(step, None)
        assert len(encodes) == 1 and len(decodes) == draw.rounds + 1
        if draw.rounds:
            assert decodes[-1]["points"].shape[-2] == draw.rounds and decodes[-1]["boxes"] is not None
        assert torch.isfinite(out["loss"])
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the trained round has gradients


class _Wrapped(torch.nn.Module):
    """Stands for DistributedDataParallel: the segmenter as ``module``, its forward the segmenter's."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        return self.module(*args, **kwargs)


def test_under_a_ddp_wrapper_the_trained_round_passes_through_the_wrapper():
    """DDP reduces gradients only for a forward through itself: an interactive step's rounds decode a no-grad
    embedding of the inner segmenter, its trained round goes through the wrapper; a feature cache, which would
    bypass the wrapper, is refused."""
    from monai_cbo.networks import feature_cache

    model = build_segmenter("tiny", preset="adapter_cbo", seed=0)
    wrapped = _Wrapped(model)
    net = CachedFrontSegmenter(wrapped)
    size = model.img_size
    target = torch.zeros(1, 1, size, size)
    target[..., 10:40, 10:40] = 1
    draw = InteractionDraw(rounds=2, click_start=False, mask_prompt=True, seed=0, target=target)
    out = net(torch.rand(1, 3, size, size), boxes=torch.tensor([[[8.0, 8, 42, 42]]]), interaction=draw)
    assert wrapped.calls == 1 and out.masks.requires_grad
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        CachedFrontSegmenter(wrapped, feature_cache())
