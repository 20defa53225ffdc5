"""Automatic segmentation: learned class prompts train, round-trip, and segment volumes with no prompt."""

from __future__ import annotations

import importlib.util

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_series import write_dicom_series
from realdata import shared_data

from monai_cbo.cli import main
from monai_cbo.inferers import (
    AutoConfig,
    Case,
    SliceGeometry,
    SliceWiseInferer,
    load_volume,
    segment_case,
    segment_volume,
)
from monai_cbo.models import build_segmenter, load_segmenter
from monai_cbo.peft import read_adapter, save_adapter
from monai_cbo.training import build_optimizer, build_trainer

SIZE = 128  # the "tiny" model's input side


def _scene(rng: np.random.Generator, square: bool, disk: bool, size: int = SIZE):
    """A [3, S, S] grey image with a bright square (class 0, left half) and / or a dark disk (class 1, right
    half), and their masks."""
    image = torch.full((3, size, size), 0.5)
    masks = torch.zeros(2, size, size)
    if square:
        y, x = rng.integers(4, size - 36), rng.integers(4, size // 2 - 30)
        image[:, y : y + 30, x : x + 30] = 1.0
        masks[0, y : y + 30, x : x + 30] = 1
    if disk:
        cy, cx = rng.integers(20, size - 20), rng.integers(size // 2 + 19, size - 19)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        disk_mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 18**2
        image[:, disk_mask] = 0.0
        masks[1, disk_mask] = 1
    return image, masks


def _batches(n: int, seed: int, batch: int = 4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        images, masks = zip(*(_scene(rng, rng.random() < 0.6, rng.random() < 0.6) for _ in range(batch)), strict=True)
        masks = torch.stack(masks)
        present = masks.flatten(2).sum(-1) > 0
        boxes = torch.zeros(batch, 2, 4)
        for b, k in zip(*torch.nonzero(present, as_tuple=True), strict=True):
            rows, cols = torch.nonzero(masks[b, k].any(1)).flatten(), torch.nonzero(masks[b, k].any(0)).flatten()
            boxes[b, k] = torch.tensor([cols[0], rows[0], cols[-1], rows[-1]], dtype=torch.float32)
        label = torch.where(present[..., None, None], masks, torch.full_like(masks, -1.0))
        out.append({"image": torch.stack(images), "label": label, "boxes": boxes, "auto_label": masks})
    return out


def _train(auto_share: float, steps: int = 450, seed: int = 0):
    # the tiny model's encoder is random, so it trains too ("full"): a PEFT preset on random features learns
    # too little in seconds; the preset does not change the class-prompt code path
    model = build_segmenter("tiny", preset="full", seed=seed, class_names=["square", "disk"])
    trainer = build_trainer(
        model, build_optimizer(model, 2e-3), _batches(steps, seed), auto_share=auto_share, seed=seed
    )
    trainer.run()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained for about 15 s on mixed steps (60 % automatic, 40 % box-prompted); at 450 steps
    seeds 0-2 all segmented both test volumes at Dice >= 0.86 with absent classes empty (300 steps left specks)."""
    return _train(auto_share=0.6)


def _volume(seed: int = 7):
    """A [3, S, S, 6] volume: the square on slices 1-3, the disk on slices 2-4, slices 0 and 5 empty."""
    rng = np.random.default_rng(seed)
    slices = [_scene(rng, 1 <= z <= 3, 2 <= z <= 4) for z in range(6)]
    return torch.stack([s[0] for s in slices], -1), torch.stack([s[1] for s in slices], -1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_class_prompts_segment_present_classes_and_leave_absent_ones_empty(trained):
    volume, masks = _volume()
    identity = SliceGeometry(tuple(volume.shape[1:]), np.array([[0, 1], [1, 1], [2, 1]]))
    seg = segment_volume(SliceWiseInferer(trained), volume, identity, auto=AutoConfig())
    assert seg.slices == 6
    for k, value in enumerate((1, 2)):
        gt = masks[k].numpy() > 0
        pred = seg.sliced_labels == value
        for z in range(6):
            if gt[..., z].any():
                assert _dice(pred[..., z], gt[..., z]) > 0.7, (value, z)
            else:
                assert pred[..., z].sum() == 0, (value, z)  # absent: empty, not a guess


def test_one_adapter_serves_box_prompts_too(trained):
    from monai_cbo.inferers import Prompt2D, mask_box

    volume, masks = _volume(seed=8)
    inferer = SliceWiseInferer(trained)
    prompts = {
        k + 1: {z: Prompt2D(box=mask_box(masks[k, ..., z])) for z in range(6) if masks[k, ..., z].any()}
        for k in range(2)
    }
    results = inferer.predict(volume, prompts)
    for k in range(2):
        for z, res in results[k + 1].items():
            assert _dice(res.prob.numpy() > 0.5, masks[k, ..., z].numpy() > 0) > 0.7


def test_refinement_and_largest_component_keep_the_structure_and_drop_an_island(trained):
    volume, masks = _volume()
    identity = SliceGeometry(tuple(volume.shape[1:]), np.array([[0, 1], [1, 1], [2, 1]]))
    volume[:, 90:116, 10:36, 5] = 1.0  # a small bright square on slice 5; slice 4 has none: an island
    inferer = SliceWiseInferer(trained)
    plain = segment_volume(inferer, volume, identity, auto=AutoConfig())
    assert (plain.sliced_labels[..., 5] == 1).sum() > 100  # the model sees a square there
    cleaned = segment_volume(inferer, volume, identity, auto=AutoConfig(refine=True, largest_component=True))
    assert (cleaned.sliced_labels[..., 5] == 1).sum() == 0  # not connected to the square on slices 1-3
    gt = masks[0].numpy() > 0
    assert _dice(cleaned.sliced_labels[..., 1:4] == 1, gt[..., 1:4]) > 0.7


def test_z_smooth_averages_each_slice_with_its_neighbours_and_keeps_what_crosses_the_threshold(trained):
    """The streaming smoothing (one slice held back) equals the direct formula on every slice, the volume's two
    end slices included (a missing neighbour counts as the slice itself)."""
    from monai_cbo.inferers.automatic import segment_automatic, smooth_across_slices

    volume, _ = _volume()
    inferer = SliceWiseInferer(trained)
    size, depth = tuple(volume.shape[1:3]), volume.shape[-1]
    raw = {z: [r.prob for r in inferer.decode_classes(emb, size)] for z, emb in inferer.encode(volume, range(depth))}
    w = 0.5
    results, slices = segment_automatic(inferer, volume, AutoConfig(z_smooth=w))
    assert slices == depth
    kept = 0
    for c, value in enumerate((1, 2)):
        for z in range(depth):
            before, after = raw[max(z - 1, 0)][c], raw[min(z + 1, depth - 1)][c]
            expected = (raw[z][c] + w * before + w * after) / (1 + 2 * w)
            assert torch.allclose(smooth_across_slices(raw[z][c], before, after, w), expected)
            if (expected > inferer.threshold).any():
                assert torch.allclose(results[value][z].prob, expected, atol=1e-6), (value, z)
                kept += 1
            else:
                assert z not in results[value], (value, z)
    assert kept >= 4
    plain, _ = segment_automatic(inferer, volume, AutoConfig())
    for c, value in enumerate((1, 2)):  # off: the raw probabilities
        for z, res in plain[value].items():
            assert torch.equal(res.prob, raw[z][c])
    with pytest.raises(ValueError, match="z_smooth"):
        AutoConfig(z_smooth=-1)


def test_adapter_round_trips_class_prompts_names_and_values(trained, tmp_path):
    path = save_adapter(trained, tmp_path / "auto.pt")
    payload = read_adapter(path)
    assert payload["format_version"] == 2
    assert payload["class_prompts"] == {"names": ["square", "disk"], "values": [1, 2], "exclusive": True}
    loaded = load_segmenter(path).eval()
    assert torch.equal(loaded.class_prompts.tokens, trained.class_prompts.tokens)
    image = _volume()[0][..., 2][None]
    with torch.no_grad():
        a = trained(image, classes=torch.tensor([[0, 1]])).masks
        b = loaded(image, classes=torch.tensor([[0, 1]])).masks
    torch.testing.assert_close(a, b)


def test_prompted_adapter_stays_format_version_1(tmp_path):
    model = build_segmenter("tiny", preset="lora_cbo")
    assert read_adapter(save_adapter(model, tmp_path / "a.pt"))["format_version"] == 1


def test_loading_into_another_class_count_names_both_counts(trained, tmp_path):
    path = save_adapter(trained, tmp_path / "auto.pt")
    with pytest.raises(ValueError, match=r"class prompts for 2 classes .* built for 3"):
        build_segmenter("tiny", preset="lora_cbo", class_names=["a", "b", "c"], adapter=path)
    with pytest.raises(ValueError, match="built without class prompts"):
        build_segmenter("tiny", preset="lora_cbo", adapter=path)
    with pytest.raises(ValueError, match=r"class prompts for \['square', 'disk'\] but the model was built for "):
        build_segmenter("tiny", preset="lora_cbo", class_names=["disk", "square"], adapter=path)  # swapped


def test_model_without_class_prompts_says_so_and_names_the_prompt_options():
    model = build_segmenter("tiny", preset="lora_cbo").eval()
    volume, _ = _volume()
    identity = SliceGeometry(tuple(volume.shape[1:]), np.array([[0, 1], [1, 1], [2, 1]]))
    with pytest.raises(ValueError, match="no class prompts.*--key-box"):
        segment_volume(SliceWiseInferer(model), volume, identity, auto=AutoConfig())
    with pytest.raises(ValueError, match="no class prompts"):
        model(volume[..., 0][None], classes=torch.tensor([[0]]))


def test_automatic_training_needs_class_prompts_and_targets():
    model = build_segmenter("tiny", preset="lora_cbo")
    with pytest.raises(ValueError, match="has none: build it with class_names"):
        build_trainer(model, build_optimizer(model, 1e-3), [], auto_share=0.5)
    model = build_segmenter("tiny", preset="lora_cbo", class_names=["square", "disk"])
    batch = _batches(1, 0)[0]
    del batch["auto_label"]
    trainer = build_trainer(model, build_optimizer(model, 1e-3), [batch], auto_share=1.0)
    with pytest.raises(ValueError, match="auto_label"):
        trainer.run()


def test_auto_share_sets_the_share_of_automatic_steps():
    from monai_cbo.training import PreparePromptBatch

    prepare = PreparePromptBatch(auto_share=0.3, seed=0)
    batch = _batches(1, 0)[0]
    kinds = ["classes" in prepare(batch)[3] for _ in range(2000)]
    assert 0.27 < np.mean(kinds) < 0.33
    assert not any("classes" in PreparePromptBatch()(batch)[3] for _ in range(50))
    image, target, _, kwargs = PreparePromptBatch(auto_share=1.0)(batch)
    assert torch.equal(target, batch["auto_label"]) and "boxes" not in kwargs
    assert kwargs["classes"].tolist() == [[0, 1]] * 4
    assert "classes" not in PreparePromptBatch(auto_share=1.0)({**batch, "auto_step": False})[3]


def test_automatic_steps_follow_the_iteration_so_a_resumed_run_draws_the_same():
    from monai_cbo.training import PreparePromptBatch

    batch = _batches(1, 0)[0]

    def kinds(prepare, steps):
        out = []
        for step in steps:
            prepare.step = step
            out.append("classes" in prepare(batch)[3])
        return out

    whole = kinds(PreparePromptBatch(auto_share=0.5, seed=3), range(1, 41))
    resumed = kinds(PreparePromptBatch(auto_share=0.5, seed=3), range(21, 41))  # a new process from step 21
    assert resumed == whole[20:] and 10 < sum(whole) < 30
    model = build_segmenter("tiny", preset="lora_cbo", class_names=["square", "disk"])
    trainer = build_trainer(model, build_optimizer(model, 1e-3), _batches(3, 0), auto_share=0.5, seed=3)
    trainer.run()
    assert trainer.prepare_batch.step == 3  # the trainer keeps the step up to date


# --- the command line ---------------------------------------------------------------------------------------


def _nifti_case(folder):
    volume, masks = _volume()
    image = (volume[0].numpy() * 1000).astype(np.float32)
    label = (masks[0] + 2 * masks[1]).clamp(max=2).numpy().astype(np.uint8)
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "lab.nii.gz")
    return folder / "img.nii.gz", folder / "lab.nii.gz"


def test_segment_without_a_prompt_runs_automatically_with_an_automatic_adapter(trained, tmp_path, capsys):
    image, label = _nifti_case(tmp_path)
    adapter = save_adapter(trained, tmp_path / "auto.pt")
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--adapter", str(adapter), "--modality", "ct"]) == 0
    written = nib.load(out / "img_seg.nii.gz")
    assert written.shape == nib.load(image).shape and np.allclose(written.affine, nib.load(image).affine)
    assert set(np.unique(written.get_fdata())) <= {0, 1, 2}
    out2 = tmp_path / "scored"
    args = ["segment", str(image), "-o", str(out2), "--adapter", str(adapter), "--auto", "--label", str(label)]
    assert main([*args, "--auto-refine", "--modality", "ct"]) == 0
    assert "square: Dice" in capsys.readouterr().out  # the label scores; class names come from the adapter


def test_segment_without_prompt_or_automatic_adapter_fails_before_reading_any_volume(tmp_path, capsys):
    missing = tmp_path / "nowhere.nii.gz"  # never read: the options alone decide
    assert main(["segment", str(missing), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--label" in err and "--prompts" in err and "--key-box" in err and "--auto" in err
    prompted = save_adapter(build_segmenter("tiny", preset="lora_cbo"), tmp_path / "prompted.pt")
    assert main(["segment", str(missing), "-o", str(tmp_path / "out"), "--adapter", str(prompted), "--auto"]) == 2
    assert "has no class prompts" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["nifti", "nrrd", "dicom"])
def test_automatic_masks_have_the_input_geometry(trained, tmp_path, kind):
    if kind == "nifti":
        image = shared_data("Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz")
    elif kind == "nrrd":
        if importlib.util.find_spec("SimpleITK") is None:
            pytest.skip("SimpleITK is not installed (it reads NRRD; NIfTI needs no SimpleITK)")
        image = shared_data("pyradiomics_nrrd/brain1_image.nrrd")
    else:
        sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is not installed (it reads DICOM series)")
        array = (np.random.default_rng(1).random((5, 12, 10)) * 1000).astype(np.int16)  # (z, y, x)
        image = write_dicom_series(sitk, tmp_path / "series", array)
    result = segment_case(SliceWiseInferer(trained), Case(image=image, auto=AutoConfig()), tmp_path / "m.nii.gz")
    written, reference = nib.load(result.output), load_volume(image)
    assert written.shape == tuple(reference.shape[1:])
    np.testing.assert_allclose(written.affine, reference.affine.numpy(), atol=1e-4)
    assert result.slices == reference.shape[-1]
