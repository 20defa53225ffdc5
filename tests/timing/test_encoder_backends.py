"""The encoder backends of monai_cbo.timing.encoder_backends: each gives eager's embedding (int8 within its
quantisation error), a missing package is a skip with the install line, and the measurement reports it so."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from monai_cbo.timing import encoder_backends as eb

# fp32 backends reorder sums (other GEMM / conv kernels, fused ops): on LiteMedSAM the difference is ~3e-6 of
# embeddings of magnitude ~1 (docs/benchmarks/cpu_speed/backends.md). 1e-4 of the embedding's scale leaves room
# for other kernels on other CPUs; a wrong or missing op gives differences of the embedding's own size.
FP32_TOL = 1e-4
# int8 dynamic quantisation rounds each Linear's weights and inputs to 256 levels (per tensor): ~0.5-1 % error
# per layer, compounding over the layers; the toy below has two Linear layers, LiteMedSAM's ~0.2 relative.
INT8_REL_TOL = 0.05


class _ToyEncoder(nn.Module):
    """Conv patch embedding, batch norm, a token MLP with layer norm and a softmax mixing: the op kinds of TinyViT."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.bn = nn.BatchNorm2d(16)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.bn(self.patch(x)))
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # [N, hw, C]
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm(t))))
        t = t + torch.softmax(t @ t.transpose(1, 2) / c**0.5, dim=-1) @ t
        return t.transpose(1, 2).reshape(n, c, h, w)


class _ToySegmenter(nn.Module):
    """What the backends use of a SamSegmenter: ``img_size``, ``image_encoder`` and ``encode``."""

    img_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = _ToyEncoder()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


@pytest.fixture
def toy() -> _ToySegmenter:
    torch.manual_seed(0)
    model = _ToySegmenter().eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity, so that folding them is tested
        model.image_encoder.bn.running_mean.uniform_(-0.5, 0.5)
        model.image_encoder.bn.running_var.uniform_(0.5, 2.0)
    return model


def _images(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def _reference(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(images)


def _fp32_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == torch.float32
    diff = eb.embedding_difference(out, ref)
    assert diff["max_abs_diff"] <= FP32_TOL * max(1.0, float(ref.abs().max())), diff


@pytest.mark.parametrize("backend", ["eager", "channels_last"])
def test_torch_backends_match_eager(toy, backend):
    images = _images(2, toy.img_size)
    _fp32_close(eb.build_encoder(backend, toy)(images), _reference(toy, images))


def test_int8_dynamic_is_close_within_quantisation_error(toy):
    images = _images(2, toy.img_size)
    out, ref = eb.build_encoder("int8_dynamic", toy)(images), _reference(toy, images)
    diff = eb.embedding_difference(out, ref)
    assert 0 < diff["rel_err"] < INT8_REL_TOL, diff  # lossy, but close
    assert isinstance(toy.image_encoder.fc1, nn.Linear) and not isinstance(  # the model passed in is untouched
        toy.image_encoder.fc1, torch.ao.nn.quantized.dynamic.Linear
    )


def test_onnxruntime_matches_eager_batch_by_image(toy):
    pytest.importorskip("onnxruntime", reason='the onnx extra is not installed: pip install "monai-cbo[onnx]"')
    pytest.importorskip("onnx", reason='the onnx extra is not installed: pip install "monai-cbo[onnx]"')
    images = _images(3, toy.img_size)  # exported for one image: a batch of 3 goes image by image
    backend = eb.onnxruntime_encoder(toy, threads=1)
    _fp32_close(backend(images), _reference(toy, images))
    assert backend.info["threads"] == 1 and backend.info["optimization"] == "all"


@pytest.mark.parametrize("precision", ["f32", None])
def test_openvino_matches_eager_batch_by_image(toy, precision):
    pytest.importorskip("openvino", reason='the openvino extra is not installed: pip install "monai-cbo[openvino]"')
    images = _images(3, toy.img_size)
    backend = eb.openvino_encoder(toy, threads=1, precision=precision)
    out, ref = backend(images), _reference(toy, images)
    if backend.info["precision"].endswith("float32'>"):
        _fp32_close(out, ref)
    else:  # the plugin's default on a CPU with bf16 / f16: ~3 significant digits
        assert eb.embedding_difference(out, ref)["rel_err"] < 0.05
    if precision == "f32":
        assert "float32" in backend.info["precision"]


@pytest.mark.slow  # ~20 s on a busy 2-core CPU: the export traces TinyViT
def test_onnxruntime_on_tiny_tinyvit(tiny_tinyvit):
    """The real TinyViT graph (its batch size traced as a constant): two slices, as two calls of one image."""
    pytest.importorskip("onnxruntime", reason='the onnx extra is not installed: pip install "monai-cbo[onnx]"')
    pytest.importorskip("onnx", reason='the onnx extra is not installed: pip install "monai-cbo[onnx]"')
    images = _images(2, tiny_tinyvit.img_size)
    _fp32_close(eb.onnxruntime_encoder(tiny_tinyvit, threads=1)(images), _reference(tiny_tinyvit, images))


@pytest.fixture(scope="module")
def tiny_tinyvit() -> nn.Module:
    from monai_cbo.models import build_segmenter

    return build_segmenter("tiny_tinyvit", preset="freeze").eval()


@pytest.mark.parametrize(("backend", "extra"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_package_raises_the_install_line(toy, monkeypatch, backend, extra):
    monkeypatch.setitem(sys.modules, backend, None)  # `import backend` now raises ImportError
    with pytest.raises(ImportError, match=rf'pip install "monai-cbo\[{extra}\]"'):
        eb.build_encoder(backend, toy)


def test_measure_reports_missing_packages_as_skipped(toy, monkeypatch):
    monkeypatch.setattr("monai_cbo.models.build_segmenter", lambda *a, **k: toy)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    figures = eb.measure_encoder_backends("toy", repeats=2, backends=["channels_last", "onnxruntime", "openvino"])
    assert list(figures) == ["channels_last", "onnxruntime", "openvino"]
    ran = figures["channels_last"]
    assert ran["available"] and ran["speedup"] > 0 and ran["before_s"] > 0 and ran["after_s"] > 0
    assert len(ran["round_speedups"]) == 2
    assert ran["max_abs_diff"] <= FP32_TOL and ran["mean_abs_diff"] <= ran["max_abs_diff"]
    for name, extra in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        assert figures[name]["available"] is False
        assert f'pip install "monai-cbo[{extra}]"' in figures[name]["skipped"]
    assert torch.get_num_threads() >= 1


def test_measure_restores_threads_and_rejects_unknown_backends(toy, monkeypatch):
    monkeypatch.setattr("monai_cbo.models.build_segmenter", lambda *a, **k: toy)
    before = torch.get_num_threads()
    eb.measure_encoder_backends("toy", repeats=1, backends=["channels_last"], threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="unknown encoder backend 'tensorrt'"):
        eb.measure_encoder_backends("toy", repeats=1, backends=["tensorrt"])


def test_using_encoder_swaps_and_restores_encode(toy):
    images = _images(1, toy.img_size)
    with eb.using_encoder(toy, lambda x: torch.zeros(x.shape[0], 16, 8, 8)) as model:
        assert float(model.encode(images).abs().sum()) == 0
    assert float(_reference(toy, images).abs().sum()) > 0
