"""An ensemble of adapters segments as the mean of its members' probabilities, through every inference path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_cbo.cli import main
from monai_cbo.inferers import (
    AutoConfig,
    KeyBox,
    ObjectPrompt,
    Prompt2D,
    PropagationConfig,
    SliceGeometry,
    SliceWiseInferer,
    VolumePrompts,
    segment_volume,
)
from monai_cbo.inferers.propagation import mask_feature
from monai_cbo.models import build_segmenter, load_ensemble
from monai_cbo.networks import SegmenterEnsemble, SliceCache
from monai_cbo.peft import save_adapter

CLASSES = ["square", "disk"]


def _member(seed: int, classes=CLASSES, preset: str = "full"):
    return build_segmenter("tiny", preset=preset, seed=seed, class_names=classes).eval()


def _volume(depth: int = 4) -> torch.Tensor:
    volume = torch.full((3, 40, 48, depth), 0.3)
    volume[:, 10:26, 12:30] = 0.9
    return volume


def _identity(volume: torch.Tensor) -> SliceGeometry:
    return SliceGeometry(tuple(volume.shape[1:]), np.array([[0, 1], [1, 1], [2, 1]]))


def test_box_prompted_probability_is_the_mean_of_the_members():
    members = [_member(0), _member(1)]
    volume = _volume()
    prompts = {1: {z: Prompt2D(box=np.array([12, 10, 29, 25], dtype=np.float32)) for z in (1, 2)}}
    alone = [SliceWiseInferer(m).predict(volume, prompts) for m in members]
    together = SliceWiseInferer(SegmenterEnsemble(members)).predict(volume, prompts)
    for z in (1, 2):
        expected = (alone[0][1][z].prob + alone[1][1][z].prob) / 2
        torch.testing.assert_close(together[1][z].prob, expected, atol=1e-5, rtol=0)
        assert together[1][z].iou == pytest.approx((alone[0][1][z].iou + alone[1][1][z].iou) / 2, abs=1e-5)
    assert not torch.allclose(alone[0][1][1].prob, alone[1][1][1].prob)  # the members do differ


def test_automatic_probability_is_the_mean_and_each_slice_is_encoded_once_per_volume():
    members = [_member(0), _member(2)]
    volume = _volume()
    inferer = SliceWiseInferer(SegmenterEnsemble(members))
    cache = SliceCache()
    (z, emb), *_ = list(inferer.encode(volume, [0, 1, 2, 3], cache))
    assert emb.shape[:2] == (1, 2)  # one cached entry holds both members' embeddings
    assert set(cache.stored.values()) == {1}
    size = tuple(volume.shape[1:3])
    together = inferer.decode_classes(emb, size)
    alone = [SliceWiseInferer(m).decode_classes(e, size) for m, e in zip(members, emb.unbind(1), strict=True)]
    for k in range(len(CLASSES)):
        torch.testing.assert_close(together[k].prob, (alone[0][k].prob + alone[1][k].prob) / 2, atol=1e-5, rtol=0)


def test_one_member_segments_as_that_model():
    model = _member(3)
    volume = _volume()
    geometry = _identity(volume)
    plain = segment_volume(SliceWiseInferer(model), volume, geometry, auto=AutoConfig())
    single = segment_volume(SliceWiseInferer(SegmenterEnsemble([model])), volume, geometry, auto=AutoConfig())
    np.testing.assert_array_equal(plain.sliced_labels, single.sliced_labels)


def test_propagation_runs_on_an_ensemble_with_its_mean_mask_prompts():
    volume = _volume(depth=5)
    key = ObjectPrompt(keys=[KeyBox(2, np.array([12, 10, 29, 25]))])
    prompts = VolumePrompts(slices={}, objects={1: key})
    model = _member(0)
    # an untrained model's masks would stop the default rules at once: let it run with the previous slice's
    # logits as mask prompts (the ensemble's mean logits)
    config = PropagationConfig(max_growth=1e9, min_shrink=0.0, min_overlap=0.0, min_iou=0.0, min_confidence=0.0)
    config = config.replace(min_similarity=-1.0, max_key_area=1e9, min_area=1, mask_prompt=True)

    def run(inferer):
        return segment_volume(inferer, volume, _identity(volume), prompts=prompts, propagation=config)

    alone = run(SliceWiseInferer(model, threshold=0.4))  # its probabilities sit near 0.48
    single = run(SliceWiseInferer(SegmenterEnsemble([model]), threshold=0.4))
    assert len(alone.results[1]) > 1  # it did propagate from the key slice
    assert sorted(single.results[1]) == sorted(alone.results[1])  # the same stops, from the same mask prompts
    for z, res in alone.results[1].items():
        torch.testing.assert_close(single.results[1][z].prob, res.prob, atol=1e-5, rtol=0)
    pair = SliceWiseInferer(SegmenterEnsemble([model, _member(1)]), threshold=0.4)
    assert len(run(pair).results[1]) > 1


def test_members_must_share_classes_and_input_size():
    with pytest.raises(ValueError) as err:
        SegmenterEnsemble([_member(0), _member(1, classes=["square"])])
    assert "member 2 has classes square=1 but member 1 has square=1, disk=2" in str(err.value)
    with pytest.raises(ValueError, match="no class prompts"):
        SegmenterEnsemble([_member(0), _member(1, classes=None)])
    with pytest.raises(ValueError, match="at least one"):
        SegmenterEnsemble([])
    with pytest.raises(RuntimeError, match="inference"):
        SegmenterEnsemble([_member(0)]).train()


def test_load_ensemble_names_the_files_that_disagree(tmp_path):
    a = save_adapter(_member(0, preset="lora_cbo"), tmp_path / "a.pt")
    b = save_adapter(_member(1, classes=["spleen"], preset="lora_cbo"), tmp_path / "b.pt")
    with pytest.raises(ValueError) as err:
        load_ensemble([a, b])
    assert "a.pt" in str(err.value) and "b.pt" in str(err.value)
    assert not isinstance(load_ensemble([a]), SegmenterEnsemble)  # one file: that model alone


def _nifti(folder):
    image = np.full((40, 48, 4), 300.0, dtype=np.float32)
    image[10:26, 12:30] = 900.0
    nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 2.0, 1.0])), folder / "img.nii.gz")
    return folder / "img.nii.gz"


def test_segment_with_repeated_adapter_runs_the_ensemble(tmp_path, capsys):
    image = _nifti(tmp_path)
    a = save_adapter(_member(0, preset="lora_cbo"), tmp_path / "a.pt")
    b = save_adapter(_member(1, preset="lora_cbo"), tmp_path / "b.pt")
    out = tmp_path / "out"
    args = ["segment", str(image), "-o", str(out), "--adapter", str(a), "--adapter", str(b), "--modality", "ct"]
    assert main([*args, "--auto", "--largest-component"]) == 0
    written = nib.load(out / "img_seg.nii.gz")
    assert written.shape == (40, 48, 4)
    prompted = save_adapter(build_segmenter("tiny", preset="lora_cbo"), tmp_path / "prompted.pt")
    args = ["segment", str(image), "-o", str(tmp_path / "o2"), "--adapter", str(a), "--adapter", str(prompted)]
    assert main([*args, "--auto"]) == 2
    assert f"adapter {prompted} has no class prompts" in capsys.readouterr().err


def test_the_similarity_feature_of_an_ensemble_embedding_spans_every_member():
    emb = torch.randn(1, 2, 8, 4, 4)
    low_res = torch.full((16, 16), -1.0)
    low_res[:8, :8] = 1.0  # the top-left 2 x 2 embedding cells
    feature = mask_feature(emb, low_res)
    expected = emb[0, :, :, :2, :2].reshape(16, 4).mean(1)
    torch.testing.assert_close(feature, expected / expected.norm())
