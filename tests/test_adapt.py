"""``monai-cbo adapt``: labelled volumes in, a user bundle out that every entry point takes; resumable, on a
budget, with its own stop rules; every bad input named before training. Tiny model, constructed volumes."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_cbo.adapt import Budget, InputProblems, Recipe, adapt, parse_class_names
from monai_cbo.adapt import train as adapt_train
from monai_cbo.bundles import bundle_model, load_bundle
from monai_cbo.cli import main
from monai_cbo.models import load_segmenter
from monai_cbo.networks import trained_with_clicks, walk_prompt_of
from monai_cbo.peft import PeftConfig, adapter_walk_prompt, read_adapter
from monai_cbo.precision import resolve_precision

TINY = {"model": "tiny", "log": lambda _: None}


def _write_case(folder: Path, name: str, seed: int, shape=(40, 40, 8), value: int = 1, affine=None) -> None:
    """An MRI-like volume (positive intensities) with a bright ellipsoid, labelled ``value``."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [shape[0] / 2 + rng.integers(-4, 5), shape[1] / 2 + rng.integers(-4, 5), shape[2] / 2]
    radii = [9 + rng.integers(0, 3), 7 + rng.integers(0, 3), shape[2] / 2 - 0.5]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    image = 100 + 20 * rng.standard_normal(shape) + 300 * inside
    affine = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image((inside * value).astype(np.uint8), affine), folder / "labels" / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapt_cases")
    for i in range(4):
        _write_case(root, f"case_{i}", i)
    return root


@pytest.fixture(scope="module")
def adapted(cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "organ_bundle"
    recipe = Recipe(validations=2, val_slices=2)
    adapt(
        cases / "images", cases / "labels", out, class_names={1: "organ"}, budget=Budget(steps=3), recipe=recipe, **TINY
    )
    return out


def test_the_bundle_holds_the_adapter_its_record_and_the_swept_stop(adapted):
    for part in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
                 "models/adapter.pt", "models/adapter.json", "data/datalist.json", "docs/README.md"):  # fmt: skip
        assert (adapted / part).is_file(), part
    assert not (adapted / ".adapt").exists()  # the run's checkpoint goes once the bundle is whole
    record = json.loads((adapted / "models/adapter.json").read_text())
    assert record["steps"] == 3 and record["classes"] == ["organ"]
    assert record["validation"]["held_out"] == "volumes" and len(record["validation"]["cases"]) == 1
    assert len(record["training_cases"]) == 3 and record["validation"]["cases"][0] not in record["training_cases"]
    assert record["trained_on"].startswith("4 labelled volume(s) given to monai-cbo adapt, trained on ")
    assert record["trained_on"].endswith(f"; held back for validation: {record['validation']['cases'][0]}")
    assert [v["step"] for v in record["validation"]["history"]][-1] == 3
    assert record["precision"] == {  # what ran, as this CPU resolves the default
        "training": resolve_precision("auto", "cpu", training=True).label,
        "inference": resolve_precision("auto", "cpu").label,
    }
    import hashlib

    assert record["sha256"] == hashlib.sha256((adapted / "models/adapter.pt").read_bytes()).hexdigest()
    assert read_adapter(adapted / "models/adapter.pt")["peft_config"]["preset"] == "adapter_cbo"
    # the stop chosen for this adapter is the one the bundle's task carries
    task = load_bundle(str(adapted)).task
    assert task.class_names == ("organ",) and task.preprocess.modality == "mri"
    # trained with simulated clicks (the recipe's default): the adapter file says so; its clicks still edit boxes
    assert task.propagation.click_boxes is True
    assert read_adapter(adapted / "models/adapter.pt")["interaction"]["share"] == Recipe().click_share > 0
    assert trained_with_clicks(load_segmenter(adapted / "models/adapter.pt"))
    for family, prefix in (("open", ""), ("ranged", "range_")):
        for rule, value in record["propagation"][family]["rules"].items():
            written = getattr(task.propagation, prefix + rule)
            assert written == value, (family, rule)
    datalist = json.loads((adapted / "data/datalist.json").read_text())
    assert sorted(e["case"] for e in datalist["training"]) == sorted(record["training_cases"])


def test_segment_bundles_and_monai_bundle_run_take_the_user_bundle(adapted, cases, tmp_path, capsys):
    image = cases / "images" / "case_3.nii.gz"
    out = tmp_path / "masks"
    args = ["segment", str(image), "--bundle", str(adapted), "-o", str(out), "--key-box", "10,10,4,30,30,4"]
    assert main(args) == 0
    mask = nib.load(out / "case_3_seg.nii.gz")
    assert mask.shape == (40, 40, 8) and np.allclose(mask.affine, nib.load(image).affine)
    assert main(["bundles", str(adapted)]) == 0
    shown = capsys.readouterr().out
    assert "classes: organ" in shown and "validation Dice (boxes)" in shown
    # a bundle path from elsewhere: a name without a separator is still a shipped bundle's
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        load_bundle(str(tmp_path))
    run = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(adapted / "configs/inference.json")]
    result = subprocess.run(
        [*run, "--input", str(image), "--output_dir", str(tmp_path / "bundle_run")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "bundle_run" / "case_3_seg.nii.gz").is_file()


def test_nested_labels_train_as_regions_and_the_bundle_writes_them_back(cases, tmp_path):
    """Classes that cover several label values (BraTS: the whole tumour holds the core): each trains on its
    values' union, the bundle's task carries them as regions with the value each is written with, and the
    adapter's masks come back as a label map with the original values (core over whole)."""
    nested = tmp_path / "nested"
    for i in range(2):
        _write_case(nested, f"n{i}", i, value=2)  # value 2 everywhere in the structure ...
        path = nested / "labels" / f"n{i}.nii.gz"
        label = nib.load(path)
        data = np.asarray(label.dataobj).copy()
        core = np.zeros_like(data, dtype=bool)
        core[16:24, 16:24, 2:6] = True
        data[core & (data == 2)] = 1  # ... and 1 in its core
        nib.save(nib.Nifti1Image(data, label.affine), path)
    classes = parse_class_names("1+2:whole,1:core")
    assert classes == {(1, 2): "whole", 1: "core"}
    # training targets: each class the union of its values, so the core lies inside the whole
    from monai_cbo.adapt.inputs import check_and_load, pair_folders
    from monai_cbo.bench.config import BenchConfig
    from monai_cbo.bench.data import BenchData
    from monai_cbo.bench.run import training_batches
    from monai_cbo.inferers import Preprocess

    quiet = TINY["log"]
    loaded, keys, _ = check_and_load(pair_folders(nested / "images", nested / "labels"), Preprocess(), classes, quiet)
    config = BenchConfig(datalist="<t>", out=str(tmp_path), classes=list(keys), steps=4, batch_size=2, box_jitter=0)
    data = BenchData.from_cases(config, loaded, [], dict(keys), (), quiet)
    pairs = [  # (whole, core) of each sampled slice where both are prompted (a slot without a box is ignored: -1)
        (label[0], label[1]) for batch in training_batches(config, data, 0, 128) for label in batch["label"]
        if label[1].min() >= 0
    ]  # fmt: skip
    assert pairs and all((core <= whole + 1e-6).all() and whole.sum() > core.sum() > 0 for whole, core in pairs)
    out = adapt(
        nested / "images",
        nested / "labels",
        tmp_path / "regions",
        class_names=classes,
        budget=Budget(steps=2),
        recipe=Recipe(validations=1, val_slices=2),
        stop_sweep=False,
        **TINY,
    )
    task = load_bundle(str(out)).task
    assert task.class_names == ("whole", "core") and not task.exclusive
    assert dict(task.regions) == {"whole": [1, 2], "core": [1]} and task.label_values == (2, 1)
    prompts = read_adapter(out / "models/adapter.pt")["class_prompts"]
    assert prompts["values"] == [2, 1] and prompts["exclusive"] is False
    datalist = json.loads((out / "data/datalist.json").read_text())
    assert datalist["regions"] == {"whole": [1, 2], "core": [1]}
    assert main(["segment", str(nested / "images" / "n0.nii.gz"), "--bundle", str(out), "-o", str(tmp_path / "m")]) == 0
    written = np.unique(np.asarray(nib.load(tmp_path / "m" / "n0_seg.nii.gz").dataobj))
    assert set(written.tolist()) <= {0, 1, 2}
    # the BraTS conventions by name; a region listed after one that covers it could never be written
    assert parse_class_names("brats2021") == {(1, 2, 4): "WT", (1, 4): "TC", 4: "ET"}
    with pytest.raises(InputProblems, match="list the larger region first"):
        adapt(nested / "images", nested / "labels", tmp_path / "never", class_names={1: "core", (1, 2): "whole"},
              budget=Budget(steps=1), **TINY)  # fmt: skip
    with pytest.raises(ValueError, match="VALUES:NAME"):
        parse_class_names("1+1:twice")


def test_walk_boxes_change_only_the_boxes_of_box_steps(cases, tmp_path):
    """``walk_boxes``: a share of the box-prompted slices take the neighbouring slice's grown box (a one-key walk's
    prompt); the slices, targets and automatic steps stay those of a run without it, and 0 changes nothing."""
    from monai_cbo.adapt.inputs import check_and_load, pair_folders
    from monai_cbo.bench.config import BenchConfig
    from monai_cbo.bench.data import BenchData
    from monai_cbo.bench.run import training_batches
    from monai_cbo.inferers import Preprocess

    quiet = TINY["log"]
    loaded, keys, _ = check_and_load(
        pair_folders(cases / "images", cases / "labels"), Preprocess(), {1: "organ"}, quiet
    )

    def batches(walk: float, flag: bool = False) -> list[dict]:
        config = BenchConfig(datalist="<t>", out=str(tmp_path), classes=list(keys), steps=30, batch_size=2,
                             box_jitter=0, auto_share=0.3, walk_boxes=walk, walk_prompt=flag)  # fmt: skip
        data = BenchData.from_cases(config, loaded, [], dict(keys), (), quiet)
        return list(training_batches(config, data, 0, 64))

    plain, again, walked = batches(0.0), batches(0.0), batches(0.5)
    for p, a, b in zip(plain, walked, batches(0.5, flag=True), strict=True):  # the flags name the walk's boxes
        assert torch.equal(a["boxes"], b["boxes"]) and "walk_flag" not in a
        moved = (a["boxes"] != p["boxes"]).any(-1)
        assert not (moved & ~b["walk_flag"]).any() and int((b["walk_flag"] & ~moved).sum()) <= 1
        assert not (a["auto_step"] and b["walk_flag"].any())
    for a, b in zip(plain, again, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
    changed = 0
    for a, b in zip(plain, walked, strict=True):
        assert a["slice_keys"] == b["slice_keys"] and a["auto_step"] == b["auto_step"]
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["auto_label"], b["auto_label"])
        moved = (a["boxes"] != b["boxes"]).any(dim=-1)
        assert not (a["auto_step"] and moved.any())  # automatic steps have no box to change
        changed += int(moved.sum())
    box_slices = sum(2 for a in plain if not a["auto_step"])
    assert 0.15 * box_slices < changed < 0.85 * box_slices, (changed, box_slices)
    with pytest.raises(ValueError, match="walk_boxes"):
        Recipe(walk_boxes=1.5)
    with pytest.raises(ValueError, match="walk_prompt .* needs walk_boxes > 0"):
        Recipe(walk_prompt=True)


def test_the_label_app_trains_a_user_bundle_with_its_own_configs(adapted, tmp_path):
    pytest.importorskip("monailabel", reason="the label extra is not installed (pip install -e .[label])")
    from monai_cbo.label.train import FineTune

    task = FineTune(load_bundle(str(adapted)), tmp_path, max_minutes=5)
    assert task.bundle.path == adapted.resolve()
    assert task.validate({"minutes": 2}) == {"minutes": 2.0}
    assert task.config()["auto_share"] == Recipe().auto_share and task.config()["minutes"] == 5


def test_a_bundle_is_a_start_its_recipe_classes_and_preprocessing(adapted, cases, tmp_path, capsys):
    """adapt --bundle (what the label server's train task runs) trains with the bundle's recipe, classes and
    preprocessing; the user bundle writes down the recipe it was trained with, and train.json resolves to it."""
    from monai.bundle import ConfigParser

    from monai_cbo.adapt import bundle_recipe, from_bundle

    recipe = bundle_recipe(adapted)
    assert recipe == Recipe(validations=2, val_slices=2)
    parser = ConfigParser()
    parser.read_config(str(adapted / "configs/train.json"))
    for key, value in (("learning_rate", recipe.learning_rate), ("auto_share", recipe.auto_share)):
        assert parser.get_parsed_content(key) == value  # train.json trains with the same recipe
    assert parser.get_parsed_content("peft#preset") == recipe.preset
    recipe, classes, preprocess = from_bundle(adapted)
    assert classes == {1: "organ"} and preprocess.modality == "mri"
    out = tmp_path / "again"
    args = ["adapt", str(cases / "images"), str(cases / "labels"), "-o", str(out), "--bundle", str(adapted)]
    args += ["--model", "tiny", "--steps", "2", "--no-stop-sweep", "--learning-rate", "0.001", "--click-share", "1"]
    assert main(args) == 0
    record = json.loads((out / "models/adapter.json").read_text())
    asked = {"learning_rate": 0.001, "click_share": 1.0}  # every box step simulated a user's clicks
    assert record["recipe"] == {**dataclasses.asdict(Recipe(validations=2, val_slices=2)), **asked}
    assert ConfigParser.load_config_file(str(out / "configs/train.json"))["recipe"]["click_share"] == 1.0
    assert record["classes"] == ["organ"]
    assert main([*args[:4], str(tmp_path / "never"), *args[5:], "--modality", "ct"]) == 2
    assert "--bundle" in capsys.readouterr().err and not (tmp_path / "never").exists()
    # a train.json written before the recipe moved into it: its literal values
    old = tmp_path / "old_bundle"
    (old / "configs").mkdir(parents=True)
    (old / "configs/train.json").write_text(
        json.dumps({"seed": 3, "peft": {"preset": "lora", "rank": None}, "learning_rate": "$1e-4", "auto_share": 0.5})
    )
    assert bundle_recipe(old) == Recipe(preset="lora", seed=3, auto_share=0.5)


def test_adapting_writes_nothing_over_an_existing_folder(cases, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        adapt(cases / "images", cases / "labels", tmp_path / "taken", budget=Budget(steps=1), **TINY)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no interrupted adapt run"):
        adapt(cases / "images", cases / "labels", tmp_path / "new", budget=Budget(steps=1), resume=True, **TINY)


def test_an_interrupted_run_resumes_where_it_stopped(cases, tmp_path, monkeypatch):
    # no early stop: two validations in each stage, the second stage's interrupted
    recipe = Recipe(validations=2, val_slices=2, patience=10)
    settings = {"budget": Budget(steps=4, decoder_steps=4), "recipe": recipe, "stop_sweep": False, **TINY}
    whole = adapt(cases / "images", cases / "labels", tmp_path / "whole", **settings)
    calls = []
    original = adapt_train.validate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # during the decoder stage's first validation (after step 6): as Ctrl-C would
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(adapt_train, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adapt(cases / "images", cases / "labels", tmp_path / "cut", **settings)
    state = torch.load(tmp_path / "cut/.adapt/state.pt", weights_only=False)
    assert state["stage"] == "decoder" and state["step"] == 6 and len(state["validations"]) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        adapt(cases / "images", cases / "labels", tmp_path / "cut", **settings)
    with pytest.raises(ValueError, match="other volumes or settings"):
        adapt(
            cases / "images", cases / "labels", tmp_path / "cut", resume=True, **{**settings, "budget": Budget(steps=5)}
        )
    # the data copied elsewhere (new paths, new file times) is the same data; an edited case is not
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(cases, moved, copy_function=shutil.copy)
    edited = tmp_path / "edited"
    shutil.copytree(cases, edited, copy_function=shutil.copy)
    _write_case(edited, "case_3", 99)
    with pytest.raises(ValueError, match="other volumes or settings"):
        adapt(edited / "images", edited / "labels", tmp_path / "cut", resume=True, **settings)
    monkeypatch.setattr(adapt_train, "validate", original)
    adapt(moved / "images", moved / "labels", tmp_path / "cut", resume=True, **settings)
    record = json.loads((tmp_path / "cut/models/adapter.json").read_text())
    assert record["steps"] == 8 and record["decoder_steps"] == 4
    history = record["validation"]["history"]
    assert [(v["stage"], v["step"]) for v in history] == [
        ("adapter", 2),
        ("adapter", 4),
        ("decoder", 6),
        ("decoder", 8),
    ]
    # the same run: the resumed adapter is the uninterrupted one's
    a = read_adapter(whole / "models/adapter.pt")["state_dict"]
    b = read_adapter(tmp_path / "cut/models/adapter.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_an_adapter_trained_on_boxes_only_says_so_in_its_file(cases, tmp_path):
    """click_share 0: the adapter never saw a point; its file has no interaction record (a click start then warns,
    test_cli), and its clicks edit boxes as every model's do (PropagationConfig.click_boxes)."""
    out = adapt(
        cases / "images",
        cases / "labels",
        tmp_path / "boxes_only",
        budget=Budget(steps=1),
        recipe=Recipe(val_slices=2, validations=1, click_share=0.0),
        stop_sweep=False,
        **TINY,
    )
    assert "interaction" not in read_adapter(out / "models/adapter.pt")
    assert not trained_with_clicks(load_segmenter(out / "models/adapter.pt"))
    assert load_bundle(str(out)).task.propagation.click_boxes is True


def test_a_walk_prompt_is_trained_saved_and_read_by_the_users_bundle(cases, tmp_path):
    """``Recipe.walk_prompt``: the walk boxes are flagged to the adapter, whose walk prompt trains (both stages) and
    is saved in the bundle's adapter; the bundle's model has it, and its propagation hands it the walk's boxes."""
    recipe = Recipe(val_slices=2, validations=1, walk_boxes=1.0, walk_prompt=True, auto_share=0.0, click_share=0.0)
    out = adapt(cases / "images", cases / "labels", tmp_path / "walked", budget=Budget(steps=4, decoder_steps=4),
                recipe=recipe, stop_sweep=False, **TINY)  # fmt: skip
    payload = read_adapter(out / "models/adapter.pt")
    assert adapter_walk_prompt(payload) and payload["state_dict"]["walk_prompt.offset"].abs().sum() > 0
    model = bundle_model(load_bundle(str(out)))
    assert walk_prompt_of(model) is not None
    torch.testing.assert_close(model.walk_prompt.offset, payload["state_dict"]["walk_prompt.offset"])


def test_walk_boxes_train_only_the_decoder_stage_where_asked(cases, tmp_path, monkeypatch):
    """``walk_stage="decoder"``: the whole-adapter stage trains on the slices' own boxes, the decoder stage on walk
    boxes (with the walk prompt only there); ``"both"`` gives both stages the recipe's share."""
    seen: list[tuple[float, bool]] = []
    real = adapt_train.training_batches

    def recording(config, *args, **kwargs):
        seen.append((config.walk_boxes, config.walk_prompt))
        return real(config, *args, **kwargs)

    monkeypatch.setattr(adapt_train, "training_batches", recording)
    for stage in ("decoder", "both"):
        recipe = Recipe(val_slices=2, validations=1, walk_boxes=0.5, walk_prompt=True, walk_stage=stage,
                        auto_share=0.0, click_share=0.0)  # fmt: skip
        adapt(cases / "images", cases / "labels", tmp_path / stage, budget=Budget(steps=2, decoder_steps=2),
              recipe=recipe, stop_sweep=False, **TINY)  # fmt: skip
    assert seen == [(0.0, False), (0.5, True), (0.5, True), (0.5, True)]
    with pytest.raises(ValueError, match="walk_stage is one of both, decoder"):
        Recipe(walk_boxes=0.5, walk_stage="adapter")


def test_each_optimizer_group_follows_the_cosine_from_its_own_peak(cases, tmp_path, monkeypatch):
    """CBO's relation tensors and heads train at the recipe's ``cbo_lr_mult`` x the base rate (as the bundles'
    CosineAnnealingLR keeps the preset's): adapt's cosine moves every group from its own peak, at every step."""
    seen: list[dict] = []
    real = adapt_train.build_optimizer

    def recording(model, lr, *args, **kwargs):
        optimizer = real(model, lr, *args, **kwargs)
        step = optimizer.step

        def record_then_step(*a, **k):
            seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
            return step(*a, **k)

        optimizer.step = record_then_step
        return optimizer

    monkeypatch.setattr(adapt_train, "build_optimizer", recording)
    recipe = Recipe(preset="adapter_cbo", val_slices=2, validations=1, click_share=0.0, cbo_lr_mult=100.0)
    adapt(cases / "images", cases / "labels", tmp_path / "lr", budget=Budget(steps=4, decoder_steps=2),
          recipe=recipe, stop_sweep=False, **TINY)  # fmt: skip
    adapter_stage = [lrs for lrs in seen if "cbo" in lrs]
    assert len(adapter_stage) == 4 and adapter_stage[0]["base"] == pytest.approx(recipe.learning_rate)
    for lrs in adapter_stage:
        assert lrs["cbo"] == pytest.approx(100.0 * lrs["base"])
    assert [lrs["base"] for lrs in adapter_stage] == sorted((lrs["base"] for lrs in adapter_stage), reverse=True)
    decoder_stage = seen[len(adapter_stage) :]  # the encoder frozen: no CBO group, the decoder's own rate
    assert len(decoder_stage) == 2 and decoder_stage[0]["base"] == pytest.approx(recipe.decoder_learning_rate)
    assert Recipe().cbo_lr_mult == 1.0 and PeftConfig.from_preset("adapter_cbo").cbo_lr_mult == 100.0  # bundles'
    with pytest.raises(ValueError, match="cbo_lr_mult must be a positive number"):
        Recipe(cbo_lr_mult=0)


def test_the_adapter_stage_stops_when_validation_stops_improving_and_the_decoder_stage_runs_out(
    cases, tmp_path, monkeypatch
):
    """Validation that peaks at its first call and never recovers: the whole-adapter stage stops at the first
    validation past half its budget that ends ``patience`` validations without gain; the decoder stage (cheap
    steps, its first part spent encoding) runs its budget out all the same; the best weights are kept."""
    scores = iter([0.6] + [0.4] * 20)

    def flat(*args, **kwargs):
        value = next(scores)
        return {"score": value, "boxes": value}

    monkeypatch.setattr(adapt_train, "validate", flat)
    recipe = Recipe(validations=8, val_slices=2, patience=2)
    adapt(
        cases / "images",
        cases / "labels",
        tmp_path / "early",
        budget=Budget(steps=16, decoder_steps=8),
        recipe=recipe,
        stop_sweep=False,
        **TINY,
    )
    record = json.loads((tmp_path / "early/models/adapter.json").read_text())
    history = [(v["stage"], v["step"]) for v in record["validation"]["history"]]
    # validations every 2 steps; at step 8 (half the budget) the last 3 are 0.4, 0.4, 0.4: no gain in 2
    assert history[:4] == [("adapter", 2), ("adapter", 4), ("adapter", 6), ("adapter", 8)], history
    assert record["steps"] == 8 + 8 and record["decoder_steps"] == 8
    assert "adapter stage: validation did not improve in 2 validations" in record["stopped"]
    assert "decoder stage: budget spent" in record["stopped"]
    assert [s for s, _ in history[4:]] == ["decoder"] * 8
    assert record["validation_dice"]["boxes"]["mean"] == 0.6  # the first validation's weights are the bundle's


def test_sigterm_keeps_the_run_as_ctrl_c_does(cases, tmp_path):
    """kill, a scheduler's time limit or a container stop sends SIGTERM: the run checkpoints and says how to go on."""
    import signal

    out = tmp_path / "killed"
    command = "from monai_cbo.cli import main; raise SystemExit(main())"
    args = [str(cases / "images"), str(cases / "labels"), "-o", str(out), "--model", "tiny", "--minutes", "10"]
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", command, "adapt", *args, "--no-stop-sweep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # the first progress line: training is under way
        seen.append(line)
        if re.search(r"adapter +\d+%\s+step", line):
            break
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "add --resume to the same command" in rest
    state = torch.load(out / ".adapt/state.pt", weights_only=False)
    assert state["stage"] == "adapter" and state["step"] >= 1


def test_the_decoder_stage_encodes_each_slice_once_and_leaves_the_encoder_as_trained(cases, tmp_path, monkeypatch):
    """With the encoder frozen, a step costs the decoder: every training and validation slice goes through the
    encoder once however many steps visit it, and the encoder's adapter weights are the first stage's best."""
    encoded: list[int] = []
    original = adapt_train.frozen_encoder

    @contextmanager
    def counting(model):
        hook = model.image_encoder.patch_embed.register_forward_hook(lambda m, i, o: encoded.append(o.shape[0]))
        with original(model):
            yield
        hook.remove()

    monkeypatch.setattr(adapt_train, "frozen_encoder", counting)
    recipe = Recipe(validations=2, val_slices=2, patience=10, batch_size=2)
    kw = {"recipe": recipe, "stop_sweep": False, **TINY}
    first = adapt(cases / "images", cases / "labels", tmp_path / "first", budget=Budget(steps=2), **kw)
    assert not encoded  # no decoder stage: nothing encoded under a frozen encoder
    staged = adapt(
        cases / "images", cases / "labels", tmp_path / "staged", budget=Budget(steps=2, decoder_steps=30), **kw
    )
    record = json.loads((staged / "models/adapter.json").read_text())
    assert (
        record["steps"] == 32 and record["decoder_steps"] == 30 and "decoder stage: budget spent" in record["stopped"]
    )
    distinct = 3 * 8 + record["validation"]["slices"]  # 3 training volumes of 8 slices, the validation's slices
    assert 0 < sum(encoded) <= distinct < 30 * recipe.batch_size, sum(encoded)
    a = read_adapter(first / "models/adapter.pt")["state_dict"]
    b = read_adapter(staged / "models/adapter.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("image_encoder."))
    with pytest.raises(ValueError, match="goes with --steps"):
        Budget(minutes=5, decoder_steps=3)
    with pytest.raises(ValueError, match="trains nothing"):
        Budget(steps=0)


def test_the_decoder_stage_trains_on_at_most_decoder_slices(cases, tmp_path, monkeypatch):
    """A bounded pool: the decoder stage encodes no more than ``decoder_slices`` training slices (and a quarter as
    many without the structure), however many its volumes hold, and draws the same pool on a resumed run."""
    from monai_cbo.bench.data import BenchData

    keys: set = set()
    real_batches = adapt_train.training_batches

    def recording(config, data, seed, size):
        for batch in real_batches(config, data, seed, size):
            if config.learning_rate == Recipe().decoder_learning_rate:  # the decoder stage's batches
                keys.update(batch["slice_keys"])
            yield batch

    monkeypatch.setattr(adapt_train, "training_batches", recording)
    recipe = Recipe(validations=1, val_slices=2, decoder_slices=5)
    adapt(cases / "images", cases / "labels", tmp_path / "pool", budget=Budget(steps=1, decoder_steps=40),
          recipe=recipe, stop_sweep=False, **TINY)  # fmt: skip
    assert 0 < len(keys) <= 5 + 1, keys  # 40 steps of 2 slices from 3 volumes of 8 would visit about 24
    data = BenchData.__new__(BenchData)
    data.slices, data.background = [(0, z) for z in range(20)], [(1, z) for z in range(8)]
    pool = adapt_train._decoder_pool(data, 6, seed=3)
    assert len(pool.slices) == 6 and len(pool.background) == 1 and pool is not data
    assert pool.slices == adapt_train._decoder_pool(data, 6, seed=3).slices  # seeded: a resume draws the same
    assert data.slices == [(0, z) for z in range(20)]  # the stage before keeps every slice
    assert adapt_train._decoder_pool(data, None, seed=3) is data and adapt_train._decoder_pool(data, 20, 3) is data
    with pytest.raises(ValueError, match="decoder_slices must be >= 1"):
        Recipe(decoder_slices=0)


def test_minutes_stop_training_on_time(cases, tmp_path):
    logs: list[str] = []
    start = time.perf_counter()
    adapt(
        cases / "images",
        cases / "labels",
        tmp_path / "timed",
        budget=Budget(minutes=0.4),
        recipe=Recipe(val_slices=2),
        stop_sweep=False,
        model="tiny",
        log=logs.append,
    )
    elapsed = time.perf_counter() - start
    record = json.loads((tmp_path / "timed/models/adapter.json").read_text())
    assert record["stopped"].startswith("adapter stage: ") and "decoder stage: " in record["stopped"]
    # both stages had their time (the decoder stage's first encodes its slices: here a few steps only)
    assert record["steps"] - record["decoder_steps"] > 3 and record["decoder_steps"] >= 1
    assert elapsed < 0.4 * 60 + 8, elapsed  # one step and a validation may run over
    assert any("ETA" in line for line in logs)


def test_one_volume_validates_on_held_back_slices_and_says_so(cases, tmp_path):
    single = tmp_path / "single"
    _write_case(single, "only", 0, shape=(40, 40, 16))
    logs: list[str] = []
    settings = {"budget": Budget(steps=2), "recipe": Recipe(val_slices=2), "stop_sweep": False}
    out = adapt(single / "images", single / "labels", tmp_path / "one", model="tiny", log=logs.append, **settings)
    record = json.loads((out / "models/adapter.json").read_text())
    assert record["validation"]["held_out"] == "slices" and "not on unseen volumes" in record["validation"]["note"]
    assert any("not on unseen volumes" in line for line in logs)


def _problems(tmp_path: Path, images: Path, labels: Path, **kw) -> str:
    with pytest.raises(InputProblems) as err:
        adapt(images, labels, tmp_path / "never", budget=Budget(steps=1), **TINY, **kw)
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written
    return str(err.value)


def test_bad_inputs_are_named_with_their_fix_before_any_training(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        _write_case(root, f"case_{i}", i)
    _write_case(root, "orphan_image", 5)
    (root / "labels" / "orphan_image.nii.gz").rename(root / "labels" / "orphan_label.nii.gz")
    message = _problems(tmp_path, root / "images", root / "labels")
    assert "image " in message and "orphan_image.nii.gz has no label" in message
    assert "label " in message and "orphan_label.nii.gz has no image" in message
    (root / "images" / "orphan_image.nii.gz").unlink()
    (root / "labels" / "orphan_label.nii.gz").unlink()
    # a label on another grid, a label with no foreground: both named, with their cases
    _write_case(root, "shifted", 3, shape=(40, 40, 8))
    nib.save(nib.Nifti1Image(np.zeros((36, 40, 8), np.uint8), np.eye(4)), root / "labels" / "shifted.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 8), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])),
             root / "labels" / "case_2.nii.gz")  # fmt: skip
    message = _problems(tmp_path, root / "images", root / "labels")
    assert re.search(r"case shifted: .*same voxel grid", message)
    assert re.search(r"case case_2: label .* has no foreground", message)
    (root / "images" / "shifted.nii.gz").unlink()
    (root / "labels" / "shifted.nii.gz").unlink()
    _write_case(root, "case_2", 2)
    # a class present in no volume
    message = _problems(tmp_path, root / "images", root / "labels", class_names={1: "organ", 7: "tumour"})
    assert "class 7 (tumour) appears in no label map" in message
    # one volume whose structure is too thin to hold slices back
    thin = tmp_path / "thin"
    _write_case(thin, "flat", 0, shape=(40, 40, 2))
    with pytest.raises(ValueError, match="fewer than 3 slices"):
        adapt(thin / "images", thin / "labels", tmp_path / "never", budget=Budget(steps=1), **TINY)
    with pytest.raises(ValueError, match="VALUES:NAME"):
        parse_class_names("spleen")


def test_a_class_on_too_few_slices_is_refused_unless_allowed(tmp_path):
    """The NRRD brain lesion (5 slices) gave an adapter that segmented unseen lesions at 0.03 where zero-shot gave
    0.65: a class on fewer than MIN_FOREGROUND_SLICES slices is refused before training, naming the class, the
    count and the fix, and trains with a warning when allowed."""
    from monai_cbo.adapt.run import MIN_FOREGROUND_SLICES

    few = tmp_path / "few"
    _write_case(few, "short", 0, shape=(40, 40, 5))  # the structure on 4-5 slices
    labels = np.asarray(nib.load(few / "labels" / "short.nii.gz").dataobj)
    shown = int((labels > 0).any(axis=(0, 1)).sum())
    assert 3 <= shown < MIN_FOREGROUND_SLICES
    message = _problems(tmp_path, few / "images", few / "labels", class_names={1: "lesion"})
    assert f"class lesion shows on {shown} slice(s) of the 1 volume(s)" in message
    assert "--allow-few-slices" in message
    logs: list[str] = []
    settings = {"budget": Budget(steps=1), "recipe": Recipe(val_slices=1), "stop_sweep": False, "log": logs.append}
    out = adapt(few / "images", few / "labels", tmp_path / "allowed", model="tiny", allow_few_slices=True, **settings)
    assert (out / "models" / "adapter.pt").is_file()
    assert any(line.startswith("warning: class 1 shows on") for line in logs)


def test_label_files_pair_with_their_images_by_case_name(tmp_path):
    from monai_cbo.adapt.inputs import pair_folders

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for name in ("a_0000.nii.gz", "b.nii.gz", "c.nrrd"):
        (tmp_path / "images" / name).write_bytes(b"")
    for name in ("a.nii.gz", "b_seg.nii.gz", "c_label.nii.gz"):
        (tmp_path / "labels" / name).write_bytes(b"")
    pairs = {c.name: (c.image.name, c.label.name) for c in pair_folders(tmp_path / "images", tmp_path / "labels")}
    assert pairs == {
        "a": ("a_0000.nii.gz", "a.nii.gz"),
        "b": ("b.nii.gz", "b_seg.nii.gz"),
        "c": ("c.nrrd", "c_label.nii.gz"),
    }


@pytest.mark.slow
def test_adapting_on_two_real_volumes_beats_zero_shot_on_a_third(tmp_path):
    """Real hippocampus MRIs (../shared/data): the decoder stage alone (the encoder as LiteMedSAM ships it, so
    zero-shot and adapted masks come from the same embeddings) on a slab of two training volumes lifts box
    prompted 2D Dice on a volume it never saw. Slabs of 4 slices keep the encoder passes to a dozen; a decoder
    step costs about one encoder pass on a CPU, so the stage is short, box steps only, at a higher rate."""
    from realdata import shared_data

    from monai_cbo.adapt.inputs import check_and_load, pair_folders
    from monai_cbo.adapt.train import Validation, validate
    from monai_cbo.inferers import Preprocess
    from monai_cbo.models import load_segmenter
    from monai_cbo.networks import build_model

    root = shared_data("Task04_Hippocampus")
    for name, folder in (("001", "train"), ("006", "train"), ("003", "test")):
        image = nib.as_closest_canonical(nib.load(root / "imagesTr" / f"hippocampus_{name}.nii.gz"))
        label = nib.as_closest_canonical(nib.load(root / "labelsTr" / f"hippocampus_{name}.nii.gz"))
        z = int(np.argmax((np.asarray(label.dataobj) > 0).sum(axis=(0, 1))))  # axial: the sliced view's slices
        for src, sub in ((image, "images"), (label, "labels")):
            (tmp_path / folder / sub).mkdir(parents=True, exist_ok=True)
            nib.save(src.slicer[:, :, z - 2 : z + 2], tmp_path / folder / sub / f"hippocampus_{name}.nii.gz")
    classes = {1: "anterior", 2: "posterior"}
    out = adapt(
        tmp_path / "train/images",
        tmp_path / "train/labels",
        tmp_path / "bundle",
        class_names=classes,
        budget=Budget(steps=0, decoder_steps=40),
        recipe=Recipe(validations=1, auto_share=0.0, decoder_lr=3e-4),
        stop_sweep=False,
        allow_few_slices=True,  # slabs of 4 slices, to keep the test short
        log=lambda _: None,
    )
    loaded, keys, _ = check_and_load(
        pair_folders(tmp_path / "test/images", tmp_path / "test/labels"), Preprocess(), classes, lambda _: None
    )
    case = loaded[0]
    held = Validation([(case, z) for z in range(case.gt.shape[-1])], "volumes", [case.name], set())
    embeddings: dict = {}
    device = torch.device("cpu")
    zero_shot = validate(build_model("litemedsam").eval(), held, list(keys), device, embeddings=embeddings)
    adapted_model = load_segmenter(load_bundle(str(out)).adapter_path).eval()
    adapted = validate(adapted_model, held, list(keys), device, embeddings=embeddings)
    assert adapted["boxes"] > zero_shot["boxes"] + 0.02, (zero_shot, adapted)


def test_the_stop_sweep_reserve_is_timed_warm_and_counts_each_targets_walks(monkeypatch):
    from types import SimpleNamespace

    from monai_cbo.adapt import run

    class Slow:  # the first encode pays a start-up cost a warm one does not
        calls = 0

        def encode(self, volume, slices):
            Slow.calls += 1
            time.sleep(0.3 if Slow.calls == 1 else 0.01)
            yield slices[0], torch.zeros(1)

        def decode(self, embedding, prompts, size):
            time.sleep(0.005)

    encode, decode = run._sweep_unit_costs(Slow(), torch.zeros(3, 16, 16, 8))
    assert encode < 0.1 and 0.005 <= decode < 0.1, (encode, decode)

    # the reserve is the estimate times a margin (the estimate was 0.84-1.18 x what live sweeps took)
    assert run.SWEEP_MARGIN > 1 and run.sweep_seconds_estimate(8, 1, 1.0, 0.1) == pytest.approx(run.SWEEP_MARGIN * 10.4)
    monkeypatch.setattr(run, "SWEEP_MARGIN", 1.0)
    monkeypatch.setattr(run, "_sweep_unit_costs", lambda inferer, volume: (1.0, 0.1))
    monkeypatch.setattr("monai_cbo.inferers.slicewise.SliceWiseInferer", lambda net, **kw: None)
    loaded = [SimpleNamespace(name=n, volume=torch.zeros(3, 8, 8, 8), gt=np.zeros((8, 8, 8))) for n in "abc"]
    net = torch.nn.Linear(1, 1)
    # one target: 8 slices x (an encode + 3 walks' decodes) = 10.4 s a volume; 30 % of a minute holds one
    plan, seconds = run._plan_stop_sweep(net, loaded, ["c"], 1, Budget(minutes=1), "cpu", "fp32", True)
    assert [c.name for c in plan] == ["c"] and seconds == pytest.approx(10.4)
    # two minutes hold three volumes of one target, two of two targets (12.8 s each)
    plan, seconds = run._plan_stop_sweep(net, loaded, ["c"], 1, Budget(minutes=2), "cpu", "fp32", True)
    assert [c.name for c in plan] == ["c", "a", "b"] and seconds == pytest.approx(31.2)
    plan, seconds = run._plan_stop_sweep(net, loaded, ["c"], 2, Budget(minutes=2), "cpu", "fp32", True)
    assert [c.name for c in plan] == ["c", "a"] and seconds == pytest.approx(25.6)
    assert net.training  # left as training wants it


def test_a_minutes_budget_keeps_time_for_the_stop_sweep_and_records_what_it_took(cases, tmp_path):
    logs: list[str] = []
    start = time.perf_counter()
    adapt(cases / "images", cases / "labels", tmp_path / "swept", budget=Budget(minutes=0.5),
          recipe=Recipe(val_slices=2), model="tiny", log=logs.append)  # fmt: skip
    elapsed = time.perf_counter() - start
    stop = json.loads((tmp_path / "swept/models/adapter.json").read_text())["propagation"]
    assert stop["seconds_reserved"] > 0 and stop["volumes"]
    assert any("kept for the stop sweep on" in line for line in logs)
    assert any(line.strip().startswith("stop sweep took") for line in logs)
    assert elapsed < 0.5 * 60 + 8, elapsed


def test_held_back_volumes_validate_on_the_structure_inside_not_its_end_slices():
    """With many volumes each held-back one gives few slices: they come from inside the structure (where it is
    its size), with the slices just past its ends for the learned stop, never its first or last few pixels."""
    from types import SimpleNamespace

    gt = np.zeros((16, 16, 24), dtype=np.uint8)
    gt[4:12, 4:12, 2:22] = 1  # the structure on slices 2 .. 21
    cases = [SimpleNamespace(name=f"case_{i:02d}", gt=gt) for i in range(16)]
    train, validation = adapt_train.split_validation(cases, [1], Recipe(val_slices=8))
    assert len(train) == 12 and len(validation.cases) == 4
    for name in validation.cases:
        zs = sorted(z for case, z in validation.items if case.name == name)
        assert zs == [1, 7, 17, 22], zs  # two inside (quarter and three-quarter marks) and the two just past
