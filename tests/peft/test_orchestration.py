from __future__ import annotations

import pytest
import torch

from monai_cbo.networks import build_model
from monai_cbo.peft import (
    CBOSlot,
    CrossBlockOrchestrator,
    PeftConfig,
    QuaternionLinear,
    apply_peft,
    hamilton_weight,
)


def test_hamilton_weight_has_the_quaternion_sign_pattern():
    n = 2
    r, i, j, k = (torch.full((n, n), float(v)) for v in (1, 2, 3, 4))
    w = hamilton_weight(r, i, j, k)
    assert w.shape == (4 * n, 4 * n)
    expected = torch.tensor([[1, 2, 3, 4], [-2, 1, 4, -3], [-3, -4, 1, 2], [-4, 3, -2, 1]], dtype=torch.float)
    blocks = w.reshape(4, n, 4, n).permute(0, 2, 1, 3)  # [row block, col block, n, n]
    assert torch.equal(blocks[..., 0, 0], expected)
    assert torch.equal(blocks, expected[:, :, None, None].expand(4, 4, n, n))


def test_quaternion_head_applies_x_times_w():
    head = QuaternionLinear(8)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(head(x), x @ head.weight())
    assert sum(p.numel() for p in head.parameters()) == 4 * 2 * 2


@pytest.mark.parametrize("width", [0, 2, 6, 17])
def test_quaternion_head_rejects_width_not_divisible_by_4(width):
    with pytest.raises(ValueError, match="multiple of 4"):
        QuaternionLinear(width)


def test_cbo_config_rejects_rank_not_divisible_by_4():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        PeftConfig.from_preset("lora_cbo", rank=6)
    assert PeftConfig.from_preset("lora", rank=6).rank == 6  # plain LoRA has no such constraint


def test_uniform_init_follows_the_authors_code():
    head = QuaternionLinear(16, init="uniform")
    assert torch.count_nonzero(head.r) == 0
    for p in (head.i, head.j, head.k):
        assert p.min() >= 0 and p.max() < 1 and p.std() > 0


def test_orthogonal_init_gives_an_orthogonal_weight():
    w = QuaternionLinear(16, init="orthogonal").weight()
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)


def test_orchestrator_starts_at_ones_and_identity():
    orch = CrossBlockOrchestrator(num_slots=6, rank=4)
    assert torch.equal(orch.C, torch.ones(1, 4, 6)) and torch.equal(orch.S, torch.eye(6))
    # every slot's mixed coefficient starts at 1; plus gamma = 1, the low-rank activation is scaled by 2
    slot = CBOSlot(orch, 3)
    h = torch.randn(2, 4)
    torch.testing.assert_close(slot(h), (2 * h) @ slot.head.weight())


def test_slot_mix_is_a_combination_of_every_slots_coefficients():
    orch = CrossBlockOrchestrator(num_slots=3, rank=4)
    with torch.no_grad():
        orch.C.copy_(torch.arange(12.0).reshape(1, 4, 3))
        orch.S.copy_(torch.tensor([[1.0, 0, 0], [0.5, 1, 0], [0, 0, 1]]))
    # slot 0 mixes its own column of C with half of slot 1's
    torch.testing.assert_close(orch.mix()[:, 0], orch.C[0, :, 0] + 0.5 * orch.C[0, :, 1])


def test_relation_product_is_computed_once_per_encoder_forward(monkeypatch):
    model = build_model("tiny")
    apply_peft(model, PeftConfig.from_preset("lora_cbo"))
    orch = model.image_encoder.cbo
    calls = []
    original = orch.compute
    monkeypatch.setattr(orch, "compute", lambda: calls.append(1) or original())
    model.encode(torch.rand(2, 3, 128, 128))
    assert len(calls) == 1  # 4 blocks x 2 slots share one C @ S
    assert orch._mix is None  # released after the forward


def _block_output_loss(model: torch.nn.Module, block: torch.nn.Module) -> torch.Tensor:
    captured = {}
    handle = block.register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
    model.encode(torch.rand(1, 3, 128, 128))
    handle.remove()
    return captured["out"].square().mean()


@pytest.mark.parametrize("preset", ["lora_cbo", "adapter_cbo"])
def test_relation_matrix_couples_blocks(preset):
    """A loss on the first block's output alone reaches the relation entries of later slots."""
    model = build_model("tiny")
    apply_peft(model, PeftConfig.from_preset(preset, lora_b_init="xavier"))
    orch = model.image_encoder.cbo
    per_block = orch.num_slots // 4
    first = model.image_encoder.blocks[0]
    later = slice(per_block, None)  # slots of blocks 1..3, whose own layers cannot affect the loss

    _block_output_loss(model, first).backward()
    # S[i, t] links slot i's coefficients into slot t: rows of later slots, columns of the first block
    assert orch.S.grad[later, :per_block].abs().min() > 0
    assert orch.S.grad[:, later].abs().sum() == 0
    # the per-block path does not couple: later slots' own gamma get nothing
    later_slots = [m for m in model.image_encoder.modules() if isinstance(m, CBOSlot) and m.index >= per_block]
    assert later_slots and all(s.gamma.grad is None or s.gamma.grad.abs().sum() == 0 for s in later_slots)

    # once S has moved off the identity, later slots' coefficient vectors in C are trained by that loss too
    assert orch.C.grad[0, :, later].abs().sum() == 0
    torch.optim.SGD([orch.S], lr=0.1).step()
    model.zero_grad()
    _block_output_loss(model, first).backward()
    assert orch.C.grad[0, :, later].abs().min() > 0


@pytest.mark.parametrize("preset", ["lora", "adapter"])
def test_without_cbo_there_are_no_relation_parameters(preset):
    model = build_model("tiny")
    apply_peft(model, PeftConfig.from_preset(preset))
    assert not hasattr(model.image_encoder, "cbo")
    assert not any(isinstance(m, (CBOSlot, CrossBlockOrchestrator, QuaternionLinear)) for m in model.modules())
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith((".C", ".S", ".gamma")) for n in names)
