from __future__ import annotations

import pytest
import torch

from monai_cbo.networks import build_model
from monai_cbo.peft import PeftConfig, apply_peft


@pytest.fixture()
def model():
    return build_model("tiny").eval()


def _count_encoder_calls(model) -> list:
    calls = []
    model.image_encoder.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    return calls


def test_one_encoder_pass_per_image_whatever_the_number_of_prompts(model):
    calls = _count_encoder_calls(model)
    boxes = torch.tensor([[[0.0, 0, 60, 60], [30, 30, 90, 90], [64, 10, 127, 50]]] * 2)
    out = model(torch.rand(2, 3, 128, 128), boxes=boxes)
    assert calls == [2]
    assert out.masks.shape == (2, 3, 1, 128, 128) and out.iou.shape == (2, 3, 1)


def test_each_prompt_gets_the_mask_it_would_get_alone(model):
    image = torch.rand(1, 3, 128, 128)
    boxes = torch.tensor([[[0.0, 0, 60, 60], [30, 30, 90, 90]]])
    with torch.no_grad():
        together = model(image, boxes=boxes).masks
        alone = model(image, boxes=boxes[:, 1:]).masks
    torch.testing.assert_close(together[:, 1:], alone, atol=1e-5, rtol=1e-5)


def test_prompt_lists_allow_a_different_count_per_image(model):
    boxes = [torch.tensor([[0.0, 0, 60, 60]]), torch.zeros(0, 4), torch.tensor([[1.0, 2, 30, 40], [5, 5, 9, 9]])]
    out = model(torch.rand(3, 3, 128, 128), boxes=boxes)
    assert [m.shape for m in out.masks] == [(1, 1, 128, 128), (0, 1, 128, 128), (2, 1, 128, 128)]
    assert [i.shape for i in out.iou] == [(1, 1), (0, 1), (2, 1)]


def test_points_boxes_masks_and_multimask(model):
    image = torch.rand(1, 3, 128, 128)
    points = torch.tensor([[[[40.0, 50], [90, 90]]]])  # [B, P, N, 2] as (x, y)
    labels = torch.tensor([[[1, 0]]])
    out = model(image, points=points, point_labels=labels, multimask_output=True)
    assert out.masks.shape == (1, 1, 3, 128, 128)
    both = model(image, boxes=torch.tensor([[[10.0, 10, 80, 80]]]), points=points, point_labels=labels)
    low = model.low_res_size
    with_mask = model(
        image, boxes=torch.tensor([[[10.0, 10, 80, 80]]]), mask_inputs=torch.randn(1, 1, 1, low, low), output_size=low
    )
    assert both.masks.shape == (1, 1, 1, 128, 128) and with_mask.masks.shape == (1, 1, 1, low, low)


def test_training_backpropagates_into_the_encoder(model):
    apply_peft(model, PeftConfig.from_preset("lora", lora_b_init="xavier"))
    model.train()
    out = model(torch.rand(1, 3, 128, 128), boxes=torch.tensor([[[10.0, 10, 80, 80]]]))
    out.masks.mean().backward()
    grads = [p.grad for n, p in model.image_encoder.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bad_inputs_get_clear_errors(model):
    with pytest.raises(ValueError, match=r"takes images of shape \[B, 3, 128, 128\], got \[1, 3, 64, 64\]"):
        model(torch.rand(1, 3, 64, 64), boxes=torch.tensor([[[0.0, 0, 10, 10]]]))
    with pytest.raises(ValueError, match="give at least one prompt"):
        model(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="points and point_labels go together"):
        model(torch.rand(1, 3, 128, 128), points=torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="disagree on the number of prompts"):
        model(
            torch.rand(1, 3, 128, 128),
            boxes=torch.zeros(1, 2, 4),
            points=torch.zeros(1, 1, 1, 2),
            point_labels=torch.ones(1, 1, 1),
        )
    with pytest.raises(ValueError, match="boxes has 1 entries for a batch of 2"):
        model(torch.rand(2, 3, 128, 128), boxes=[torch.zeros(1, 4)])


def test_sam_vit_normalises_with_imagenet_statistics():
    vit = build_model("tiny", normalize="sam")
    seen = []
    vit.image_encoder.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    vit.encode(torch.full((1, 3, 128, 128), 0.5))
    expected = (127.5 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(seen[0][0, :, 0, 0], expected)


@pytest.mark.parametrize("name", ["tiny", "tiny_tinyvit"])
def test_the_encoder_runs_channels_last_on_the_cpu_with_the_embedding_it_had(name):
    """On the CPU the encoder's convolutions and the images they take are channels-last (bf16 autocast then skips
    its layout copies); the embedding is the contiguous-format encoder's to float rounding, handed on contiguous;
    another device gets its weights back contiguous."""
    model = build_model(name).eval()
    convs = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    seen = []
    convs[0].register_forward_pre_hook(
        lambda _m, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last))
    )
    images = torch.rand(2, 3, model.img_size, model.img_size)
    plain = build_model(name).eval()
    plain.load_state_dict(model.state_dict())
    plain.image_encoder.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        embedding = model.encode(images)
        staged = model.encode_stages(images)
        reference = plain.image_encoder(images)
    assert seen == [True, True] and embedding.is_contiguous() and staged.is_contiguous()
    torch.testing.assert_close(embedding, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(staged, embedding)
    model.to("meta")  # a device other than the CPU
    assert all(c.weight.is_contiguous() and c.weight.device.type == "meta" for c in convs)


def test_cpu_channels_last_off_keeps_the_encoder_contiguous(monkeypatch):
    """``CPU_CHANNELS_LAST = False``: the weights and the images the encoder takes stay contiguous on the CPU."""
    import monai_cbo.networks.segmenter as segmenter

    monkeypatch.setattr(segmenter, "CPU_CHANNELS_LAST", False)
    model = build_model("tiny_tinyvit").eval()
    convs = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous() for c in convs)
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    seen = []
    convs[0].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].is_contiguous()))
    with torch.no_grad():
        model.encode(torch.rand(1, 3, model.img_size, model.img_size))
    assert seen == [True]
