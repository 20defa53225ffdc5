"""Tests for monai_cbo/models.py: model + preset + seed, and adapters loaded back onto it."""

from __future__ import annotations

import torch

from monai_cbo.models import build_segmenter
from monai_cbo.peft import save_adapter


def test_build_segmenter_applies_the_preset_and_loads_an_adapter(tmp_path):
    trained = build_segmenter("tiny", preset="adapter_cbo")
    with torch.no_grad():  # stand-in for training: every trained parameter moves
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1)
    path = save_adapter(trained, tmp_path / "a.pt")
    again = build_segmenter("tiny", preset="adapter_cbo", adapter=path)
    assert again.training and again.peft_config.preset == "adapter_cbo"
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), again.parameters(), strict=True))
    fresh = build_segmenter("tiny", preset="adapter_cbo")
    assert not all(torch.equal(p, q) for p, q in zip(trained.parameters(), fresh.parameters(), strict=True))
    assert build_segmenter("tiny", preset="freeze", adapter="").peft_config.preset == "freeze"
