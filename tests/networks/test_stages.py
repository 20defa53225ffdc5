"""Encoder stages: the split reproduces the encoder; the frozen front is what the preset leaves untrained."""

from __future__ import annotations

import pytest
import torch

from monai_cbo.models import build_segmenter
from monai_cbo.networks import encoder_stages, frozen_prefix, run_stages


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("tiny", {"freeze": 6, "decoder_only": 6, "lora": 1, "adapter": 1, "full": 0}),
        ("tiny_tinyvit", {"freeze": 6, "decoder_only": 6, "lora": 2, "adapter": 2, "full": 0}),
    ],
)
def test_stages_reproduce_the_encoder_and_the_frozen_front_follows_the_preset(name, prefix):
    for preset, expected in prefix.items():
        model = build_segmenter(name, preset=preset)  # in train mode, as training uses it
        assert frozen_prefix(model.image_encoder) == expected, preset
        x = torch.rand(2, 3, model.img_size, model.img_size)
        with torch.no_grad():
            whole = model.encode(x)
            split = model.encode_stages(model.encode_stages(x, 0, expected), expected)
        assert len(encoder_stages(model.image_encoder)) == 6
        assert torch.equal(whole, split), preset


def test_frozen_batch_norms_stay_in_eval_mode_when_training():
    """TinyViT's batch norms: frozen ones must not use batch statistics or drift while an adapter trains."""
    model = build_segmenter("tiny_tinyvit", preset="lora")
    norms = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = norms[0].running_mean.clone()
    model.encode(torch.rand(2, 3, 256, 256))
    assert torch.equal(norms[0].running_mean, before)
    full = build_segmenter("tiny_tinyvit", preset="full")  # trainable batch norms train
    assert all(m.training for m in full.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_run_stages_without_normalisation_and_unknown_encoders():
    model = build_segmenter("tiny", preset="freeze")
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(run_stages(model.image_encoder, x), model.image_encoder(x))
    with pytest.raises(ValueError, match="cannot split a Linear"):
        encoder_stages(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"takes images of shape \[B, 3, 128, 128\]"):
        model.encode_stages(torch.rand(1, 3, 64, 64))
