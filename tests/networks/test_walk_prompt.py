"""The walk prompt: a learned offset on the box tokens of boxes a propagation walk drew (networks.walk_prompt)."""

from __future__ import annotations

import pytest
import torch

from monai_cbo.models import build_segmenter, load_segmenter
from monai_cbo.networks import add_walk_prompt, build_model, walk_prompt_of
from monai_cbo.peft import PeftConfig, adapter_walk_prompt, apply_peft, read_adapter, save_adapter

IMAGE = torch.rand(1, 3, 128, 128)
BOXES = torch.tensor([[[10.0, 10, 60, 60], [40, 40, 100, 90]]])


def _tiny_with_walk_prompt():
    model = build_model("tiny").eval()
    apply_peft(model, PeftConfig.from_preset("adapter"))
    return add_walk_prompt(model)


def test_a_new_walk_prompt_changes_nothing_and_a_trained_one_only_the_flagged_boxes():
    model = _tiny_with_walk_prompt()
    walk = torch.tensor([[True, False]])
    with torch.no_grad():
        plain = model(IMAGE, boxes=BOXES).masks
        torch.testing.assert_close(model(IMAGE, boxes=BOXES, walk=walk).masks, plain, rtol=0, atol=0)
        model.walk_prompt.offset.normal_()
        flagged = model(IMAGE, boxes=BOXES, walk=walk).masks
        unflagged = model(IMAGE, boxes=BOXES, walk=torch.tensor([[False, False]])).masks
    assert not torch.allclose(flagged[:, 0], plain[:, 0])  # the walk's box reads differently
    torch.testing.assert_close(flagged[:, 1], plain[:, 1])  # the user's box as before
    torch.testing.assert_close(unflagged, plain)
    # with points too (the box's corners are the last tokens), and points alone ignore the flag
    pts, labels = torch.tensor([[[[30.0, 30]], [[70, 60]]]]), torch.tensor([[[1], [0]]])
    with torch.no_grad():
        both = model(IMAGE, boxes=BOXES, points=pts, point_labels=labels, walk=walk).masks
        both_plain = model(IMAGE, boxes=BOXES, points=pts, point_labels=labels).masks
        alone = model(IMAGE, points=pts, point_labels=labels, walk=walk).masks
        alone_plain = model(IMAGE, points=pts, point_labels=labels).masks
    assert not torch.allclose(both[:, 0], both_plain[:, 0])
    torch.testing.assert_close(both[:, 1], both_plain[:, 1])
    torch.testing.assert_close(alone, alone_plain)


def test_a_model_without_a_walk_prompt_ignores_the_flags_and_bad_flags_are_refused():
    model = build_model("tiny").eval()
    assert walk_prompt_of(model) is None
    with torch.no_grad():
        torch.testing.assert_close(
            model(IMAGE, boxes=BOXES, walk=torch.tensor([[True, True]])).masks, model(IMAGE, boxes=BOXES).masks
        )
    with pytest.raises(ValueError, match="walk must flag each of its 2 boxes"):
        _tiny_with_walk_prompt()(IMAGE, boxes=BOXES, walk=torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="already has a walk prompt"):
        add_walk_prompt(_tiny_with_walk_prompt())


def test_only_flagged_boxes_train_the_walk_prompt():
    model = build_segmenter("tiny", preset="adapter", walk_prompt=True)
    model(IMAGE, boxes=BOXES, walk=torch.tensor([[False, False]])).masks.sum().backward()
    assert model.walk_prompt.offset.grad is None or not model.walk_prompt.offset.grad.any()
    model(IMAGE, boxes=BOXES, walk=torch.tensor([[True, False]])).masks.sum().backward()
    assert model.walk_prompt.offset.grad.abs().sum() > 0


def test_the_walk_prompt_is_saved_in_the_adapter_and_loaded_with_it(tmp_path):
    model = build_segmenter("tiny", preset="adapter", walk_prompt=True)
    with torch.no_grad():
        model.walk_prompt.offset.normal_()
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert adapter_walk_prompt(read_adapter(path))
    loaded = load_segmenter(path)
    torch.testing.assert_close(loaded.walk_prompt.offset, model.walk_prompt.offset)
    plain = save_adapter(build_segmenter("tiny", preset="adapter"), tmp_path / "plain.pt")
    assert not adapter_walk_prompt(read_adapter(plain)) and walk_prompt_of(load_segmenter(plain)) is None


@pytest.mark.parametrize("interactive", [False, True])
def test_the_trainer_hands_a_batchs_walk_flags_to_the_model(interactive):
    """One step of the bundles' trainer: a batch whose boxes are flagged as a walk's trains the walk prompt (box
    steps and interactive ones); without flags it stays as it was."""
    from monai_cbo.training import Interaction, build_optimizer, build_trainer

    def offset_after(flags: torch.Tensor | None) -> torch.Tensor:
        model = build_segmenter("tiny", preset="adapter", walk_prompt=True)
        label = torch.zeros(1, 2, 128, 128)
        label[:, 0, 15:55, 15:55], label[:, 1, 45:85, 45:95] = 1, 1
        batch = {"image": IMAGE, "label": label, "boxes": BOXES}
        if flags is not None:
            batch["walk_flag"] = flags
        interaction = Interaction(share=1.0, max_clicks=2, click_start=0.0) if interactive else None
        trainer = build_trainer(model, build_optimizer(model, 1e-2), [batch], interaction=interaction)
        trainer.run()
        return model.walk_prompt.offset.detach()

    assert not offset_after(None).any() and not offset_after(torch.tensor([[False, False]])).any()
    assert offset_after(torch.tensor([[True, False]])).abs().sum() > 0


def test_the_walk_prompt_trains_in_its_own_optimizer_group_at_its_rate():
    from monai_cbo.networks import WalkPrompt
    from monai_cbo.peft import optimizer_param_groups

    model = build_segmenter("tiny", preset="adapter_cbo", walk_prompt=True)
    groups = {g["name"]: g for g in optimizer_param_groups(model, 1e-3)}
    assert groups["walk_prompt"]["params"] == [model.walk_prompt.offset]
    assert groups["walk_prompt"]["lr"] == pytest.approx(1e-3 * WalkPrompt.lr_mult) and groups["base"]["lr"] == 1e-3
    assert all(p is not model.walk_prompt.offset for name in ("base", "cbo") for p in groups[name]["params"])
    assert "walk_prompt" not in {g["name"] for g in optimizer_param_groups(build_segmenter("tiny"), 1e-3)}


def test_an_adapter_with_a_walk_prompt_starts_a_build_that_did_not_ask_for_one(tmp_path):
    """A bundle's train.json (``build_segmenter(adapter=...)``) started from a user bundle's adapter keeps its walk
    prompt instead of refusing the file."""
    model = build_segmenter("tiny", preset="adapter", walk_prompt=True)
    with torch.no_grad():
        model.walk_prompt.offset.normal_()
    path = save_adapter(model, tmp_path / "adapter.pt")
    started = build_segmenter("tiny", preset="adapter", adapter=path)
    torch.testing.assert_close(started.walk_prompt.offset, model.walk_prompt.offset)


def test_a_bench_started_from_an_adapter_with_a_walk_prompt_keeps_it(tmp_path):
    from monai_cbo.bench.config import BenchConfig
    from monai_cbo.bench.run import _load_init_adapter

    model = build_segmenter("tiny", preset="adapter", walk_prompt=True)
    with torch.no_grad():
        model.walk_prompt.offset.normal_()
    path = save_adapter(model, tmp_path / "adapter.pt")
    config = BenchConfig(datalist="<t>", out=str(tmp_path), model="tiny", presets=["adapter"], init_adapter=str(path))
    fresh = build_segmenter("tiny", preset="adapter")
    _load_init_adapter(config, fresh)
    torch.testing.assert_close(fresh.walk_prompt.offset, model.walk_prompt.offset)
