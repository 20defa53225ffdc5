from __future__ import annotations

import pytest
import torch

from monai_cbo.networks import build_model
from monai_cbo.peft import PRESETS, AdapterMLP, LoraQKV, PeftConfig, apply_peft

SIZES = {"tiny": 128, "tiny_tinyvit": 256, "litemedsam": 256}


def _inputs(size: int, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    s = size / 128
    boxes = torch.tensor([[[10, 12, 70, 90], [40, 40, 120, 100]], [[5, 5, 60, 60], [64, 20, 110, 127]]]) * s
    return {"image": torch.rand(batch, 3, size, size, generator=g), "boxes": boxes[:batch]}


@pytest.mark.parametrize("model_name", list(SIZES))
def test_every_preset_equals_the_frozen_model_at_step_zero(model_name):
    inputs = _inputs(SIZES[model_name], batch=1 if model_name == "litemedsam" else 2)  # ~2 s per 256² image
    with torch.no_grad():
        reference = build_model(model_name)(**inputs)
    for preset in PRESETS:
        model = apply_peft(build_model(model_name), PeftConfig.from_preset(preset)).eval()
        with torch.no_grad():
            out = model(**inputs)
        torch.testing.assert_close(out.masks, reference.masks, atol=1e-5, rtol=1e-5, msg=f"{preset} masks")
        torch.testing.assert_close(out.iou, reference.iou, atol=1e-5, rtol=1e-5, msg=f"{preset} iou")


def test_xavier_lora_b_init_makes_the_branch_active_at_step_zero():
    inputs = _inputs(128)
    with torch.no_grad():
        reference = build_model("tiny")(**inputs).masks
        model = apply_peft(build_model("tiny"), PeftConfig.from_preset("lora_cbo", lora_b_init="xavier"))
        assert not torch.allclose(model.eval()(**inputs).masks, reference)


def test_lora_adds_its_delta_to_q_and_v_of_the_vit_layout():
    base = torch.nn.Linear(8, 24)
    layer = LoraQKV(base, torch.arange(8), torch.arange(16, 24), rank=2, b_init="xavier")
    x = torch.randn(3, 8)
    delta = layer(x) - base(x)
    torch.testing.assert_close(delta[:, :8], layer.lora_B_q(layer.lora_A_q(x)))
    assert torch.count_nonzero(delta[:, 8:16]) == 0
    torch.testing.assert_close(delta[:, 16:], layer.lora_B_v(layer.lora_A_v(x)))


def test_adapter_is_a_scaled_bottleneck_beside_the_mlp():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    adapter = AdapterMLP(mlp, dim=8, width=4, scale=0.5, dropout=0.0, up_init="xavier").eval()
    x = torch.randn(5, 8)
    h = torch.relu(adapter.adapter_down(adapter.adapter_norm(x)))
    torch.testing.assert_close(adapter(x), mlp(x) + 0.5 * adapter.adapter_up(h))
    # parameters: LN 2d + down d*V + V + up V*d + d
    assert sum(p.numel() for p in adapter.adapter_parameters()) == 2 * 8 + 8 * 4 + 4 + 4 * 8 + 8


def test_lora_refuses_a_module_that_is_not_linear():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoraQKV(torch.nn.Conv1d(4, 12, 1), torch.arange(4), torch.arange(8, 12), rank=2)
