"""The openvino encoder runtime (monai_cbo.networks.runtime): the model's own embedding, an adapter's included;
converted once and read from disk after, keyed by the weights; the inferer and `segment` use it; clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from monai_cbo.inferers import Prompt2D, SliceWiseInferer
from monai_cbo.models import build_segmenter
from monai_cbo.networks import runtime

# fp32 runtimes reorder sums (other GEMM and conv kernels): ~3e-6 of an embedding of scale ~1 on LiteMedSAM
# (docs/benchmarks/cpu_speed/backends.md); a wrong or missing op differs by the embedding's own size
FP32_TOL = 1e-4


@pytest.fixture
def openvino():
    return pytest.importorskip(
        "openvino", reason='the openvino extra is not installed: pip install "monai-cbo[openvino]"'
    )


@pytest.fixture
def adapted() -> torch.nn.Module:
    """The tiny model with a CBO adapter whose weights are not their zero start, so the adapter changes the
    embedding (an export that dropped it would be caught)."""
    model = build_segmenter("tiny", preset="lora_cbo").eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn_like(param))
    return model


def _images(model, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, model.img_size, model.img_size, generator=torch.Generator().manual_seed(3))


def test_openvino_gives_the_models_embedding_and_converts_once(openvino, adapted, tmp_path, monkeypatch):
    images = _images(adapted)
    with torch.inference_mode():
        reference = adapted.encode(images)
        base = build_segmenter("tiny", preset="freeze").eval().encode(images)
    assert (reference - base).abs().max() > 100 * FP32_TOL  # the adapter matters to this embedding
    said: list[str] = []
    encoder = runtime.openvino_encoder(adapted, cache=tmp_path, log=said.append)
    out = encoder(images)  # a batch of two, encoded image by image
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert (out - reference).abs().max() <= FP32_TOL * reference.abs().max()
    assert any("converting" in s for s in said)
    (folder,) = (tmp_path / "openvino").iterdir()  # one converted model, no temporary folder left
    assert folder.name == runtime.encoder_key(adapted, "openvino", openvino.__version__.split("-")[0])
    assert encoder.info["precision"] == "f32"

    def no_conversion(*_args):
        raise AssertionError("converted again")

    monkeypatch.setattr(runtime, "_convert", no_conversion)
    again = runtime.openvino_encoder(adapted, cache=tmp_path)  # read from disk
    torch.testing.assert_close(again(images), out)
    with torch.no_grad():  # other adapter weights: another model, converted anew
        next(p for p in adapted.parameters() if p.requires_grad).add_(1.0)
    with pytest.raises(AssertionError, match="converted again"):
        runtime.openvino_encoder(adapted, cache=tmp_path)


def test_the_key_follows_every_weight_and_the_normalisation(adapted):
    key = runtime.encoder_key(adapted)
    assert runtime.encoder_key(build_segmenter("tiny", preset="lora_cbo")) != key
    copy = runtime.frozen_copy(adapted)
    assert runtime.encoder_key(copy) == key  # the same weights: the same key
    copy.normalize = not copy.normalize
    assert runtime.encoder_key(copy) != key
    assert runtime.encoder_key(adapted, "openvino", "1") != runtime.encoder_key(adapted, "openvino", "2")


def test_the_key_hashes_scalar_and_bf16_tensors(adapted):
    """LiteMedSAM's batch norms count their batches in a 0-dim int64 buffer; a bf16 copy has no numpy dtype."""
    with_scalar = runtime.frozen_copy(adapted)
    with_scalar.image_encoder.register_buffer("count", torch.tensor(7))
    key = runtime.encoder_key(with_scalar)
    assert key != runtime.encoder_key(adapted)
    with_scalar.image_encoder.count.fill_(8)
    assert runtime.encoder_key(with_scalar) != key
    assert runtime.encoder_key(runtime.frozen_copy(adapted).bfloat16()) != runtime.encoder_key(adapted)


def test_a_torn_conversion_left_behind_is_not_read(openvino, adapted, tmp_path):
    """A process killed while converting leaves a temporary folder, never a model under the key's name."""
    key = runtime.encoder_key(adapted, "openvino", openvino.__version__.split("-")[0])
    torn = tmp_path / "openvino" / f".{key}-killed"
    torn.mkdir(parents=True)
    (torn / "encoder.xml").write_text("<half")
    encoder = runtime.openvino_encoder(adapted, cache=tmp_path)
    images = _images(adapted, 1)
    with torch.inference_mode():
        assert (encoder(images) - adapted.encode(images)).abs().max() <= FP32_TOL * 10
    assert (tmp_path / "openvino" / key / "encoder.xml").is_file()


def test_the_inferer_with_the_openvino_encoder_gives_torchs_masks(openvino, adapted, tmp_path):
    volume = torch.rand(3, 40, 36, 4, generator=torch.Generator().manual_seed(5))
    prompts = {1: {z: Prompt2D(box=[4, 6, 30, 33]) for z in range(4)}}
    torch_masks = SliceWiseInferer(adapted).predict(volume, prompts)
    encoder = runtime.openvino_encoder(adapted, cache=tmp_path)
    ov_masks = SliceWiseInferer(adapted, encoder=encoder).predict(volume, prompts)
    for z in range(4):
        a, b = torch_masks[1][z].prob, ov_masks[1][z].prob
        assert (a - b).abs().max() < 1e-3
    with pytest.raises(ValueError, match="front_cache"):
        SliceWiseInferer(adapted, encoder=encoder, front_cache={})


def test_bf16_runs_near_fp32(openvino, adapted, tmp_path):
    images = _images(adapted, 1)
    with torch.inference_mode():
        reference = adapted.encode(images)
    encoder = runtime.openvino_encoder(adapted, torch.bfloat16, cache=tmp_path)
    out = encoder(images)
    # bf16 keeps 8 bits of mantissa: ~0.4 % a rounding, compounding over the layers; a CPU without bf16 runs f32
    assert (out - reference).norm() / reference.norm() < 0.05


def test_without_openvino_the_error_says_how_to_install_it(adapted, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"monai-cbo\[openvino\]"):
        runtime.openvino_encoder(adapted, cache=tmp_path)
    assert not (tmp_path / "openvino").exists()


def test_a_number_format_openvino_has_no_hint_for_is_refused(openvino, adapted, tmp_path):
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        runtime.openvino_encoder(adapted, torch.int8, cache=tmp_path)


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "mine"))
    assert runtime.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(runtime.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir() == tmp_path / "xdg" / "monai_cbo"


def test_auto_is_openvino_where_installed_for_one_model_on_the_cpu(adapted, monkeypatch):
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert runtime.resolve_runtime("auto", "cpu", adapted) == "openvino"
    assert runtime.resolve_runtime("auto", "cuda", adapted) == "torch"
    assert runtime.resolve_runtime("auto", "cpu", torch.nn.ModuleList([adapted, adapted])) == "torch"  # ensemble
    assert runtime.resolve_runtime("torch", "cpu", adapted) == "torch"
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert runtime.resolve_runtime("auto", "cpu", adapted) == "torch"
    with pytest.raises(ValueError, match="unknown encoder runtime"):
        runtime.resolve_runtime("onnx", "cpu", adapted)


def test_the_default_runtime_follows_the_environment(monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "openvino")
    assert runtime.default_runtime() == "openvino"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "nonsense")
    assert runtime.default_runtime() == "auto"
    monkeypatch.delenv(runtime.RUNTIME_ENV)
    assert runtime.default_runtime() == "auto"


def test_auto_falls_back_to_torch_when_openvino_fails_and_openvino_by_name_does_not(adapted, monkeypatch, capsys):
    from monai_cbo.cli.options import encoder_runtime

    def broken(*_args, **_kwargs):
        raise RuntimeError("an op it cannot convert")

    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    monkeypatch.setattr(runtime, "openvino_encoder", broken)
    assert encoder_runtime("auto", adapted, "cpu", "auto", "segment") is None
    assert "openvino could not run this model's encoder (RuntimeError: an op it cannot convert); using torch" in (
        capsys.readouterr().err
    )
    with pytest.raises(RuntimeError, match="cannot convert"):
        encoder_runtime("openvino", adapted, "cpu", "auto", "segment")
    assert encoder_runtime("torch", adapted, "cpu", "auto", "segment") is None


def _segment(tmp_path, *options: str, runtime_env: str | None = "torch") -> subprocess.CompletedProcess:
    import nibabel as nib

    image = tmp_path / "case.nii.gz"
    if not image.exists():
        data = np.random.default_rng(0).normal(size=(40, 36, 5)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), image)
    env = {**os.environ, runtime.CACHE_ENV: str(tmp_path / "cache")}
    env.pop(runtime.RUNTIME_ENV, None)
    if runtime_env is not None:
        env[runtime.RUNTIME_ENV] = runtime_env
    cmd = [
        sys.executable,
        "-m",
        "monai_cbo.cli",
        "segment",
        str(image),
        "--model",
        "tiny",
        "--key-box",
        "5,5,1,30,30,3",
    ]
    return subprocess.run([*cmd, *options], capture_output=True, text=True, env=env)


def test_segment_with_the_openvino_runtime_writes_torchs_mask(openvino, tmp_path):
    import nibabel as nib

    torch_run = _segment(tmp_path, "-o", str(tmp_path / "torch"))
    assert torch_run.returncode == 0, torch_run.stderr
    ov_run = _segment(tmp_path, "-o", str(tmp_path / "ov"), "--encoder-runtime", "openvino")
    assert ov_run.returncode == 0, ov_run.stderr
    assert "converting the image encoder for openvino" in ov_run.stderr
    assert "image encoder on openvino" not in torch_run.stderr
    masks = [np.asarray(nib.load(next((tmp_path / d).glob("*_seg.nii.gz"))).dataobj) for d in ("torch", "ov")]
    assert (masks[0] != masks[1]).mean() < 0.001
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 1
    again = _segment(tmp_path, "-o", str(tmp_path / "ov2"), "--encoder-runtime", "openvino")
    assert again.returncode == 0 and "converting" not in again.stderr  # read from the cache
    auto = _segment(tmp_path, "-o", str(tmp_path / "auto"), runtime_env=None)  # the default, openvino installed
    assert auto.returncode == 0 and "image encoder on openvino (f32" in auto.stderr
    assert "converting" not in auto.stderr  # the same converted model
    auto_mask = np.asarray(nib.load(next((tmp_path / "auto").glob("*_seg.nii.gz"))).dataobj)
    assert (auto_mask != masks[1]).sum() == 0


def test_segment_refuses_the_openvino_runtime_on_cuda(tmp_path):
    run = _segment(tmp_path, "-o", str(tmp_path / "out"), "--encoder-runtime", "openvino", "--device", "cuda")
    assert run.returncode != 0
    assert "--encoder-runtime openvino runs on the CPU" in run.stderr
    assert "Traceback" not in run.stderr
    assert not list((tmp_path / "out").glob("*_seg.nii.gz"))


def test_litemedsam_on_openvino_gives_its_embedding(openvino, tmp_path):
    """The packaged model (batch norms with 0-dim counters, TinyViT's attention): what segment converts."""
    model = build_segmenter("litemedsam", preset="freeze").eval()
    image = _images(model, 1)
    with torch.inference_mode():
        reference = model.encode(image)
    out = runtime.openvino_encoder(model, cache=tmp_path)(image)
    assert (out - reference).abs().max() <= FP32_TOL * reference.abs().max()
