from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from monai_cbo.cli import main
from monai_cbo.networks import build_model
from monai_cbo.peft import (
    PRESETS,
    AdapterMLP,
    LoraQKV,
    PeftConfig,
    apply_peft,
    count_parameters,
    find_attention_blocks,
    optimizer_param_groups,
)
from monai_cbo.peft.orchestration import CBOSlot, CrossBlockOrchestrator

# METHOD.md: SAM ViT-B (12 blocks, d = 768); the mask decoder is not part of these counts.
VIT_B_COUNTS = {
    ("lora", 4): (147_456, 0),
    ("lora_cbo", 4): (147_456, 864),
    ("adapter", 16): (322_752, 0),
    ("adapter_cbo", 16): (322_752, 1_296),
}


@pytest.fixture(scope="module")
def vit_b_counts() -> dict:
    counts = {}
    for preset, rank in VIT_B_COUNTS:
        model = build_model("vit_b")  # full ViT-B shape, random weights: no checkpoint needed to count
        counts[preset] = count_parameters(apply_peft(model, PeftConfig.from_preset(preset, rank=rank)))
    return counts


@pytest.mark.parametrize("preset,rank", list(VIT_B_COUNTS))
def test_vit_b_parameter_counts_match_the_paper(vit_b_counts, preset, rank):
    peft, cbo = VIT_B_COUNTS[(preset, rank)]
    counts = vit_b_counts[preset]
    assert (counts["peft"], counts["cbo"]) == (peft, cbo)
    assert counts["encoder"] == 0 and counts["prompt_encoder"] == 0
    assert counts["total_trainable"] == peft + cbo + counts["decoder"]


@pytest.mark.parametrize("preset,rank", [("lora_cbo", 4), ("adapter_cbo", 16)])
def test_params_command_prints_the_same_counts(vit_b_counts, capsys, preset, rank):
    assert main(["params", "--model", "vit_b", "--preset", preset, "--rank", str(rank)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("peft", "cbo", "decoder", "total_trainable", "total")} == {
        k: vit_b_counts[preset][k] for k in ("peft", "cbo", "decoder", "total_trainable", "total")
    }


def test_console_script_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "monai_cbo.cli", "params", "--model", "tiny", "--preset", "lora_cbo"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    counts = json.loads(out.stdout)
    # tiny: 4 blocks of width 64, r = 4 -> 4 x 2 x (64*4 + 4*64); CBO: C 4*8 + S 8*8 + 4 x (8 + 2*4)
    assert counts["peft"] == 4 * 2 * (64 * 4 + 4 * 64)
    assert counts["cbo"] == 4 * 8 + 8 * 8 + 4 * (8 + 2 * 4)


def test_unknown_model_and_preset_are_named_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'vit_x'; choose one of 'litemedsam', 'vit_b', .*'tiny'"):
        build_model("vit_x")
    with pytest.raises(ValueError, match="unknown preset 'lora-cbo'.*did you mean 'lora_cbo'"):
        PeftConfig.from_preset("lora-cbo")


def test_finds_the_attention_blocks_of_both_encoder_families():
    vit = find_attention_blocks(build_model("tiny").image_encoder)
    assert [b.name for b in vit] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    tinyvit = find_attention_blocks(build_model("tiny_tinyvit").image_encoder)
    # the first TinyViT stage is convolutional; then stages of 1, 2, 1 attention blocks
    assert [b.name for b in tinyvit] == [
        "layers.1.blocks.0",
        "layers.2.blocks.0",
        "layers.2.blocks.1",
        "layers.3.blocks.0",
    ]
    assert [b.dim for b in tinyvit] == [32, 48, 48, 320]


def test_tinyvit_lora_touches_only_the_q_and_v_outputs():
    model = build_model("tiny_tinyvit")
    apply_peft(model, PeftConfig.from_preset("lora", lora_b_init="xavier"))
    qkv = model.image_encoder.layers[2].blocks[0].attn.qkv
    assert isinstance(qkv, LoraQKV)
    x = torch.randn(2, 5, qkv.base_layer.in_features)
    changed = (qkv(x) - qkv.base_layer(x)).abs().amax(dim=(0, 1)) > 0
    attn = model.image_encoder.layers[2].blocks[0].attn  # heads of [q (key_dim) | k (key_dim) | v (d)]
    layout = torch.tensor(([1] * attn.key_dim + [0] * attn.key_dim + [1] * attn.d) * attn.num_heads, dtype=torch.bool)
    assert torch.equal(changed, layout)


def test_block_selection_adapts_only_the_named_blocks():
    model = build_model("tiny")
    apply_peft(model, PeftConfig.from_preset("lora_cbo", blocks=[1, 3]))
    wrapped = [isinstance(b.attn.qkv, LoraQKV) for b in model.image_encoder.blocks]
    assert wrapped == [False, True, False, True]
    assert model.image_encoder.cbo.num_slots == 4
    with pytest.raises(ValueError, match=r"blocks \[7\] out of range: the encoder has 4 attention blocks"):
        apply_peft(build_model("tiny"), PeftConfig.from_preset("lora", blocks=[7]))


def test_applying_twice_is_refused():
    model = apply_peft(build_model("tiny"), PeftConfig.from_preset("lora"))
    with pytest.raises(ValueError, match="already applied"):
        apply_peft(model, PeftConfig.from_preset("adapter"))


def _expected_trainable(model: torch.nn.Module, preset: str) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if preset == "full" and name in ("image_encoder", "prompt_encoder"):
            names |= {prefix + n for n, _ in module.named_parameters()}
        if name == "mask_decoder" and preset != "freeze":
            names |= {prefix + n for n, _ in module.named_parameters()}
        if isinstance(module, (LoraQKV, AdapterMLP)):
            names |= {prefix + n for n, _ in module.named_parameters() if not n.startswith("base_layer.")}
        if isinstance(module, CrossBlockOrchestrator):
            names |= {prefix + "C", prefix + "S"}
    return names


@pytest.mark.parametrize("model_name", ["tiny", "tiny_tinyvit"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_exactly_the_intended_parameters_train(model_name, preset):
    model = apply_peft(build_model(model_name), PeftConfig.from_preset(preset))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model, preset)
    if preset in ("lora_cbo", "adapter_cbo"):
        assert any(n.endswith("slot_q.gamma") or n.endswith("slot.gamma") for n in trainable)
        assert any(".head." in n for n in trainable)


@pytest.mark.parametrize("preset", ["lora", "lora_cbo", "adapter", "adapter_cbo", "decoder_only"])
def test_pretrained_weights_do_not_change_after_an_optimizer_step(preset):
    model = apply_peft(build_model("tiny"), PeftConfig.from_preset(preset, lora_b_init="xavier"))
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam(optimizer_param_groups(model, lr=1e-3))
    out = model(torch.rand(2, 3, 128, 128), boxes=torch.tensor([[[10.0, 10, 90, 90]], [[30.0, 20, 60, 100]]]))
    out.masks.sigmoid().mean().backward()
    opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert sum(not torch.equal(params[n], v) for n, v in trained.items()) > len(trained) // 2


def test_cbo_parameters_get_their_own_learning_rate():
    model = apply_peft(build_model("tiny"), PeftConfig.from_preset("adapter_cbo", cbo_lr_mult=100.0))
    groups = {g["name"]: g for g in optimizer_param_groups(model, lr=1e-4)}
    assert groups["cbo"]["lr"] == pytest.approx(1e-2) and groups["base"]["lr"] == pytest.approx(1e-4)
    cbo_ids = {
        id(p) for m in model.modules() if isinstance(m, (CBOSlot, CrossBlockOrchestrator)) for p in m.parameters()
    }
    assert {id(p) for p in groups["cbo"]["params"]} == cbo_ids
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(groups["cbo"]["params"]) + len(groups["base"]["params"]) == n_trainable
