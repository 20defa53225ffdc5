from __future__ import annotations

import pickle

import pytest
import torch

from monai_cbo.models import load_segmenter
from monai_cbo.networks import TRAINED_INTERACTION, build_model, trained_with_clicks
from monai_cbo.peft import (
    PeftConfig,
    adapter_interaction,
    adapter_state_dict,
    apply_peft,
    load_adapter,
    optimizer_param_groups,
    read_adapter,
    save_adapter,
)

IMAGE = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
BOXES = torch.tensor([[[8.0, 16, 100, 90], [30, 30, 64, 120]]])


def _trained(preset: str, model_name: str = "tiny", **config) -> torch.nn.Module:
    model = apply_peft(build_model(model_name), PeftConfig.from_preset(preset, **config))
    opt = torch.optim.SGD(optimizer_param_groups(model, lr=1e-2), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(IMAGE, boxes=BOXES).masks.sigmoid().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("preset", ["lora_cbo", "adapter_cbo", "decoder_only", "lora"])
def test_adapter_round_trip_gives_identical_outputs(tmp_path, preset):
    model = _trained(preset)
    path = save_adapter(model, tmp_path / "adapter.pt", metadata={"epoch": 2})
    fresh = load_adapter(apply_peft(build_model("tiny"), PeftConfig.from_preset(preset)), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(IMAGE, boxes=BOXES).masks, model(IMAGE, boxes=BOXES).masks, rtol=0, atol=0)
    rebuilt = load_segmenter(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(IMAGE, boxes=BOXES).masks, model(IMAGE, boxes=BOXES).masks, rtol=0, atol=0)
    assert read_adapter(path)["metadata"] == {"epoch": 2}


def test_checkpoint_holds_exactly_the_trained_parameters(tmp_path):
    model = _trained("lora_cbo")
    saved = read_adapter(save_adapter(model, tmp_path / "a.pt"))["state_dict"]
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".base_layer." in n for n in saved)


def test_litemedsam_lora_cbo_adapter_without_decoder_is_a_few_hundred_kb(tmp_path):
    model = apply_peft(build_model("litemedsam"), PeftConfig.from_preset("lora_cbo", train_decoder=False))
    size = save_adapter(model, tmp_path / "a.pt").stat().st_size
    assert 50_000 < size < 400_000
    n = sum(t.numel() for t in adapter_state_dict(model).values())
    assert n == 29_696 + 640  # 10 TinyViT attention blocks: LoRA r = 4 on q and v, plus the CBO extra


@pytest.mark.parametrize(
    "saved,loading,field",
    [
        ({"rank": 8}, {"rank": 4}, "rank"),
        ({"cbo_lr_mult": 10.0}, {}, "cbo_lr_mult"),
    ],
)
def test_mismatched_config_is_refused_naming_the_field(tmp_path, saved, loading, field):
    path = save_adapter(apply_peft(build_model("tiny"), PeftConfig.from_preset("lora_cbo", **saved)), tmp_path / "a.pt")
    model = apply_peft(build_model("tiny"), PeftConfig.from_preset("lora_cbo", **loading))
    with pytest.raises(ValueError, match=rf"does not match the model's PEFT config: {field}: checkpoint has"):
        load_adapter(model, path)


def test_other_preset_and_other_model_are_refused(tmp_path):
    path = save_adapter(apply_peft(build_model("tiny"), PeftConfig.from_preset("lora_cbo")), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="preset: checkpoint has 'lora_cbo', model has 'adapter_cbo'"):
        load_adapter(apply_peft(build_model("tiny"), PeftConfig.from_preset("adapter_cbo")), path)
    with pytest.raises(ValueError, match="on model 'tiny', not 'tiny_tinyvit'; build the model with --model tiny"):
        load_adapter(apply_peft(build_model("tiny_tinyvit"), PeftConfig.from_preset("lora_cbo")), path)


def test_existing_checkpoint_is_not_overwritten_silently(tmp_path):
    model = apply_peft(build_model("tiny"), PeftConfig.from_preset("lora"))
    path = save_adapter(model, tmp_path / "a.pt")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_adapter(model, path)
    assert path.read_bytes() == before
    save_adapter(model, path, overwrite=True)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('ran')",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format": "monai_cbo.adapter", "state_dict": _RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match=r"cannot read adapter checkpoint .*evil.pt"):
        read_adapter(path)
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*evil.pt"):
        build_model("tiny", checkpoint=path)
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    path = save_adapter(apply_peft(build_model("tiny"), PeftConfig.from_preset("lora")), tmp_path / "a.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read adapter checkpoint .*a.pt"):
        read_adapter(path)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        read_adapter(tmp_path / "missing.pt")


def test_the_click_training_record_round_trips_and_a_malformed_one_reads_as_none(tmp_path):
    model = _trained("lora_cbo")
    save_adapter(model, tmp_path / "boxes.pt")
    setattr(model, TRAINED_INTERACTION, {"share": 0.5, "max_clicks": 5, "click_start": 0.25, "mask_prompt": 0.5})
    save_adapter(model, tmp_path / "clicks.pt")
    assert adapter_interaction(read_adapter(tmp_path / "boxes.pt")) is None
    assert adapter_interaction(read_adapter(tmp_path / "clicks.pt"))["share"] == 0.5
    assert trained_with_clicks(load_segmenter(tmp_path / "clicks.pt"))
    assert not trained_with_clicks(load_segmenter(tmp_path / "boxes.pt"))
    for field in ("yes", [0.5], {"share": 0}, None):  # a file's field is not trusted to be a record
        assert adapter_interaction({"interaction": field}) is None
