"""``--precision``: reduced precision where the hardware has it, fp32 where it has not, both tested here whatever
this machine's CPU is (native bf16 is simulated either way)."""

from __future__ import annotations

import warnings

import pytest
import torch

from monai_cbo import precision as P
from monai_cbo.inferers import Prompt2D, SliceWiseInferer
from monai_cbo.metrics import dice_3d
from monai_cbo.models import build_segmenter
from monai_cbo.networks import build_model
from monai_cbo.training import AutocastForward, build_optimizer, build_trainer, train_step


@pytest.fixture()
def native(monkeypatch):
    """Make the CPU report native bf16 (True) or not (False), and ``auto`` pick it where it is native."""

    def set_native(value: bool, auto: bool = True, training: bool = True) -> None:
        monkeypatch.setattr(P, "cpu_native_bf16", lambda: value)
        monkeypatch.setattr(P, "CPU_AUTO_BF16", auto)
        monkeypatch.setattr(P, "CPU_AUTO_BF16_TRAINING", training)

    return set_native


def test_auto_on_the_cpu_is_bf16_only_where_native_and_switched_on(native):
    native(True, auto=True)
    p = P.resolve_precision("auto", "cpu")
    assert (p.encoder, p.decoder, p.label) == (torch.bfloat16, None, "bf16 encoder, fp32 decoder")
    native(False, auto=True)  # the fallback: no native bf16, fp32, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = P.resolve_precision("auto", "cpu")
    assert (p.encoder, p.decoder, p.reduced, p.label) == (None, None, False, "fp32")
    native(True, auto=False)  # not switched on until measured: fp32
    assert not P.resolve_precision("auto", "cpu").reduced


def test_the_shipped_cpu_default_is_fp32_until_the_dice_rule_is_measured(shipped_precision):
    assert P.CPU_AUTO_BF16 is shipped_precision["CPU_AUTO_BF16"] is False
    assert not P.resolve_precision("auto", "cpu").reduced


def test_training_auto_is_bf16_where_the_cpu_has_it_and_fp32_where_not(native):
    native(True, auto=False)  # inference's policy off: training follows its own
    p = P.resolve_precision("auto", "cpu", training=True)
    assert (p.encoder, p.decoder) == (torch.bfloat16, torch.bfloat16)
    assert not P.resolve_precision("auto", "cpu").reduced  # the same CPU's inference stays fp32

    def trainer_network(**kw):
        model = build_segmenter("tiny", preset="lora_cbo", seed=3)
        return build_trainer(model, build_optimizer(model, 1e-3), [], **kw).network

    assert isinstance(trainer_network(), AutocastForward)  # precision auto, the default
    assert not isinstance(trainer_network(precision="fp32"), AutocastForward)
    native(False)  # the fallback: fp32, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not P.resolve_precision("auto", "cpu", training=True).reduced
        assert not isinstance(trainer_network(), AutocastForward)
    native(True, training=False)
    assert not isinstance(trainer_network(), AutocastForward)
    assert (
        P.CPU_AUTO_BF16_TRAINING is False
        and P.resolve_precision("auto", "cuda", training=True).encoder == torch.float16
    )


def test_the_shipped_training_default_is_bf16_where_native(shipped_precision):
    assert shipped_precision["CPU_AUTO_BF16_TRAINING"] is True  # the tests themselves pin it off (conftest.py)


def test_cuda_auto_keeps_fp16_autocast_and_fp32_turns_everything_off():
    p = P.resolve_precision("auto", "cuda")
    assert (p.encoder, p.decoder) == (torch.float16, torch.float16)
    assert not P.resolve_precision("fp32", "cuda").reduced
    assert P.resolve_precision("bf16", "cuda").decoder == torch.bfloat16


def test_forced_bf16_warns_where_it_is_emulated_and_bad_names_are_refused(native):
    native(False)
    with pytest.warns(UserWarning, match="no native bf16.*20x slower"):
        p = P.resolve_precision("bf16", "cpu")
    assert p.encoder == torch.bfloat16 and p.decoder is None
    native(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision.*'fp32'"):
        P.resolve_precision("float32", "cpu")


def test_native_bf16_detection_reads_torch_then_cpuinfo(monkeypatch):
    from monai_cbo import utils

    utils.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert utils.cpu_native_bf16() is True
    utils.cpu_native_bf16.cache_clear()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(utils, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert utils.cpu_native_bf16() is True
    utils.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(utils, "_cpu_flags", lambda: {"avx2"})
    assert utils.cpu_native_bf16() is False
    utils.cpu_native_bf16.cache_clear()


def _blob_volume() -> tuple[torch.Tensor, dict]:
    volume = torch.zeros(3, 48, 48, 2)
    volume[:, 12:36, 10:30] = 1.0
    volume += 0.05 * torch.rand(volume.shape, generator=torch.Generator().manual_seed(0))
    box = Prompt2D(box=[8, 10, 31, 37])
    return volume, {1: {z: box for z in range(2)}}


@pytest.mark.filterwarnings("ignore:--precision bf16")
def test_bf16_and_fp32_masks_agree_on_a_tiny_model(native):
    """Stated agreement: Dice >= 0.95 between the bf16-encoder masks and the fp32 masks of the same weights (a
    random tiny model's masks are barely above threshold, the worst case for a format change); the embedding
    reaches the fp32 decoder as fp32."""
    native(True)
    model = build_model("tiny")
    volume, prompts = _blob_volume()
    fp32 = SliceWiseInferer(model, precision="fp32")
    bf16 = SliceWiseInferer(model, precision="bf16")
    assert bf16.precision.encoder == torch.bfloat16 and fp32.precision.encoder is None
    (_, emb32), (_, emb16) = next(fp32.encode(volume, [1])), next(bf16.encode(volume, [1]))
    assert emb16.dtype == torch.float32 and not torch.equal(emb16, emb32)  # it did compute in bf16
    torch.testing.assert_close(emb16, emb32, atol=0.05, rtol=0.05)
    a = fp32.label_map(fp32.predict(volume, prompts), (48, 48, 2))
    b = bf16.label_map(bf16.predict(volume, prompts), (48, 48, 2))
    assert a.any() and dice_3d(a == 1, b == 1) >= 0.95


def test_amp_false_still_means_fp32_and_a_resolved_precision_is_taken_as_it_is():
    model = build_model("tiny")
    assert not SliceWiseInferer(model, amp=False, precision="bf16").precision.reduced
    given = P.Precision("bf16", "cpu", torch.bfloat16, None)
    assert SliceWiseInferer(model, precision=given).precision is given


@pytest.mark.filterwarnings("ignore:--precision bf16")
def test_bf16_training_step_runs_on_the_cpu_with_an_fp32_loss_close_to_fp32s():
    losses = {}
    for name in ("fp32", "bf16"):
        model = build_segmenter("tiny", preset="lora_cbo", seed=3)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer = build_trainer(model, build_optimizer(model, 1e-3), [], precision=name)
        assert isinstance(trainer.network, AutocastForward) == (name == "bf16")
        batch = _train_batch(model.img_size)
        torch.manual_seed(0)
        losses[name] = train_step(trainer, batch)["loss"]
        assert losses[name].dtype == torch.float32 and torch.isfinite(losses[name])
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert float(losses["bf16"]) == pytest.approx(float(losses["fp32"]), rel=0.05)
    assert float(losses["bf16"]) != float(losses["fp32"])  # it did compute in bf16


def test_a_wrapped_network_still_unwraps_to_the_segmenter_for_the_optimizer():
    model = build_segmenter("tiny", preset="lora_cbo", seed=3)
    optimizer = build_optimizer(AutocastForward(model, "cpu"), 1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())


def _train_batch(size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 1, size, size)
    label[:, :, 20:60, 30:90] = 1
    return {
        "image": torch.rand(2, 3, size, size, generator=g),
        "label": label,
        "boxes": torch.tensor([[[28.0, 18, 92, 62]]]).repeat(2, 1, 1),
    }


def test_the_cli_options_map_to_a_precision():
    from monai_cbo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["segment", "x.nii.gz", "-o", "out"]).precision == "auto"
    assert parser.parse_args(["segment", "x.nii.gz", "-o", "out", "--no-amp"]).precision == "fp32"
    assert parser.parse_args(["segment", "x.nii.gz", "-o", "out", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "x.nii.gz", "-o", "out", "--precision", "int8"])
    bench = parser.parse_args(["bench", "d.json", "-o", "b", "--precision", "bf16"])
    assert bench.precision == "bf16"
