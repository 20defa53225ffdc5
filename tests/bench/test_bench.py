"""monai-cbo bench / report: same results with and without the feature cache, resume, reports."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_cbo.bench import BenchConfig, BenchData, run_bench, train_and_evaluate
from monai_cbo.bench.images import box_plot_svg, encode_png, largest_slice_overlay, overlay_panels
from monai_cbo.bench.report import write_report
from monai_cbo.bench.run import frozen_encoder
from monai_cbo.bench.runner import BenchFailed
from monai_cbo.cli import main
from monai_cbo.data.demo import make_demo_case
from monai_cbo.models import build_segmenter, load_segmenter
from monai_cbo.networks import class_prompts_of, encoder_stages, feature_cache, frozen_prefix
from monai_cbo.peft import read_adapter


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    """Five small synthetic CT cases with two classes (the organ split in halves): 3 train, 2 test."""
    root = tmp_path_factory.mktemp("benchdata")
    entries = []
    for i in range(5):
        image, label, affine = make_demo_case(100 + i, shape=(48, 48, 5))
        label = label.astype(np.uint8)
        half = np.arange(48)[:, None, None] < np.median(np.nonzero(label)[0]) if label.any() else 0
        label = np.where((label == 1) & ~half, 2, label).astype(np.uint8)
        for sub, array in (("images", image), ("labels", label)):
            (root / sub).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), root / sub / f"case{i}.nii.gz")
        entries.append({"case": f"case{i}", "image": f"images/case{i}.nii.gz", "label": f"labels/case{i}.nii.gz"})
    path = root / "datalist.json"
    path.write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "left", "2": "right"},
                "regions": {"both": [1, 2], "right": [2]},  # "right" repeats a label: kept once
                "training": entries[:3],
                "test": entries[3:],
            }
        ),
        encoding="utf-8",
    )
    return path


def _config(datalist: Path, out: Path, **kw) -> BenchConfig:
    base = dict(
        datalist=str(datalist),
        out=str(out),
        model="tiny_tinyvit",
        presets=["freeze", "lora_cbo"],
        seeds=[0],
        steps=2,
        batch_size=1,
        modality="ct",
        ct_window=[-160.0, 240.0],
        device="cpu",
    )
    return BenchConfig(**{**base, **kw})


def test_feature_cache_changes_nothing_but_time(datalist, tmp_path):
    config = _config(datalist, tmp_path)
    data = BenchData(config, log=lambda _: None)
    results = {}
    for name, cache in (("plain", None), ("cached", feature_cache())):
        for preset in ("decoder_only", "lora_cbo", "lora"):  # whole encoder frozen / frozen front only
            run_dir = tmp_path / name / preset
            run_dir.mkdir(parents=True)
            result = train_and_evaluate(config, data, preset, 0, run_dir, cache, log=lambda _: None)
            results[name, preset] = (
                result,
                read_adapter(run_dir / "adapter.pt")["state_dict"],
                (run_dir / "metrics.csv").read_text(encoding="utf-8"),
            )
        if cache is not None:  # lora reuses what lora_cbo computed for the same slices
            assert cache.hits > 0 and len(cache) > 0
    for preset in ("decoder_only", "lora_cbo", "lora"):
        (a, wa, ma), (b, wb, mb) = results["plain", preset], results["cached", preset]
        assert a["train"]["loss"] == b["train"]["loss"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert ma == mb


def test_same_slices_and_jitter_for_every_preset(datalist, tmp_path):
    data = BenchData(_config(datalist, tmp_path), log=lambda _: None)
    assert data.sample_order(3, 7) == data.sample_order(3, 7)
    assert data.sample_order(3, 7) != data.sample_order(4, 7)
    assert all(
        max(int((data.train[i].gt[..., z] == c).sum()) for c in data.classes) >= 4 for i, z in data.sample_order(0, 20)
    )


def test_bench_resumes_without_redoing_runs_and_refuses_another_budget(datalist, tmp_path):
    out = tmp_path / "bench"
    logs: list[str] = []
    results = run_bench(_config(datalist, out), log=logs.append)
    assert [(r["preset"], r["seed"]) for r in results] == [("freeze", 0), ("lora_cbo", 0)]
    freeze = json.loads((out / "runs/freeze/seed0/result.json").read_text(encoding="utf-8"))
    assert freeze["params"]["total_trainable"] == 0 and freeze["train"]["slices"] == 0
    assert not (out / "runs/freeze/seed0/adapter.pt").exists()
    assert (out / "runs/lora_cbo/seed0/adapter.pt").is_file()
    assert sorted(p.name for p in (out / "runs/lora_cbo/seed0/masks").iterdir()) == [
        "case3_seg.nii.gz",
        "case4_seg.nii.gz",
    ]
    stamp = (out / "runs/lora_cbo/seed0/result.json").stat().st_mtime_ns

    # an interrupted run (folder without result.json) is redone; finished ones are not; freeze runs once
    (out / "runs/lora_cbo/seed1").mkdir(parents=True)
    (out / "runs/lora_cbo/seed1/partial").write_text("x", encoding="utf-8")
    logs.clear()
    results = run_bench(_config(datalist, out, seeds=[0, 1]), log=logs.append)
    assert any("3 runs (2 done, 1 to do)" in line for line in logs)
    assert [(r["preset"], r["seed"]) for r in results] == [("freeze", 0), ("lora_cbo", 0), ("lora_cbo", 1)]
    assert (out / "runs/lora_cbo/seed0/result.json").stat().st_mtime_ns == stamp
    assert not (out / "runs/lora_cbo/seed1/partial").exists()
    assert any("bench ETA" in line for line in logs)

    with pytest.raises(ValueError, match=r"bench\.json was made with another budget.*steps: 2 there, 3 now"):
        run_bench(_config(datalist, out, steps=3), log=logs.append)


def test_automatic_steps_train_class_prompts_and_score_every_automatic_mode(datalist, tmp_path):
    out = tmp_path / "bench"
    config = _config(datalist, out, presets=["lora", "lora_cbo"], auto_share=0.5, steps=4)
    base, result = run_bench(config, log=lambda _: None)
    run = out / "runs/lora_cbo/seed0"
    assert read_adapter(run / "adapter.pt")["class_prompts"] == {
        "names": ["left", "right"],
        "values": [1, 2],
        "exclusive": True,
    }
    assert result["params"]["class_prompts"] == 2 * 2 * 256  # two tokens of 256 per class
    for mode in ("auto", "auto_refine", "auto_lcc"):
        rows = (run / f"metrics_{mode}.csv").read_text(encoding="utf-8").splitlines()
        assert len(rows) == 1 + 2 * 3  # header + 2 cases x (2 classes + the "both" region)
        assert sorted(p.name for p in (run / f"masks_{mode}").iterdir()) == ["case3_seg.nii.gz", "case4_seg.nii.gz"]
    assert set(result["automatic"]) == {"auto", "auto_refine", "auto_lcc"}
    paths = write_report(out)
    text = next(p for p in paths if p.suffix == ".md").read_text(encoding="utf-8")
    assert "## Automatic segmentation" in text and "| automatic Dice |" in text
    # CBO against its base, paired per case, with box prompts and in every automatic mode: give lora_cbo known
    # gains over lora in each mode's file (a different one per mode), then each row must show its own mode's gain
    modes = {"": "box prompts", "auto": "auto", "auto_refine": "auto + refine", "auto_lcc": "auto + lcc"}
    for i, mode in enumerate(modes):
        name = f"metrics_{mode}.csv" if mode else "metrics.csv"
        with open(Path(base["dir"]) / name, encoding="utf-8") as f:
            ref = {(r["case"], r["class"]): float(r["dice"]) for r in csv.DictReader(f)}
        with open(Path(result["dir"]) / name, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["dice"] = ref[r["case"], r["class"]] + (i + 1) * (0.01 if r["case"] == "case3" else 0.03)
        with open(Path(result["dir"]) / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    text = next(p for p in write_report(out, overwrite=True) if p.suffix == ".md").read_text(encoding="utf-8")
    for i, name in enumerate(modes.values()):
        gain, half = 0.02 * (i + 1), 1.96 * 0.01 * (i + 1)  # per-case gains 0.01 k and 0.03 k: sd 0.01 k * sqrt(2)
        row = f"| lora_cbo − lora | left | {name} | 2 | {gain:+.4f} | [{gain - half:+.4f}, {gain + half:+.4f}] | 2/2 |"
        assert row in text, row
    # the same seed draws the same steps: automatic and box steps alternate as drawn, identically on a rerun
    again = run_bench(_config(datalist, tmp_path / "again", presets=["lora_cbo"], auto_share=0.5, steps=4))
    assert again[0]["train"]["loss"] == result["train"]["loss"]


STAGED = dict(presets=["lora_cbo"], auto_share=0.75, steps=2)  # seed 0 draws automatic and box steps among 4


@pytest.fixture(scope="module")
def staged_runs(datalist, tmp_path_factory):
    """Two benches of the same run, without and with 4 decoder steps after its 2 steps: (folder, plain result,
    staged result, the staged bench's log)."""
    root = tmp_path_factory.mktemp("staged")
    plain = run_bench(_config(datalist, root / "plain", **STAGED), log=lambda _: None)[0]
    logs: list[str] = []
    staged = run_bench(_config(datalist, root / "staged", decoder_steps=4, **STAGED), log=logs.append)[0]
    return root, plain, staged, logs


def test_decoder_stage_trains_the_decoder_on_afrozen_encoder_and_saves_a_whole_adapter(datalist, staged_runs):
    tmp_path, plain, staged, logs = staged_runs
    a = read_adapter(tmp_path / "plain/runs/lora_cbo/seed0/adapter.pt")["state_dict"]
    b = read_adapter(tmp_path / "staged/runs/lora_cbo/seed0/adapter.pt")["state_dict"]
    assert a.keys() == b.keys()  # the frozen encoder's LoRA and CBO are saved too: the adapter loads as any other
    encoder = [k for k in a if k.startswith("image_encoder.")]
    rest = [k for k in a if not k.startswith("image_encoder.")]
    assert encoder and rest
    # the first stage is the same run; the decoder stage leaves every encoder weight as it found it ...
    assert plain["train"]["loss"] == staged["train"]["loss"]
    assert all(torch.equal(a[k], b[k]) for k in encoder)
    # ... and trains the decoder and the class prompts on
    assert any(not torch.equal(a[k], b[k]) for k in rest if k.startswith("mask_decoder."))
    assert any(not torch.equal(a[k], b[k]) for k in rest if "class_prompts" in k)
    stage = staged["train"]["decoder_stage"]
    assert stage["steps"] == 4 and stage["slices"] == 4 and len(stage["loss"]) == 4
    assert stage["learning_rate"] == pytest.approx(1e-4 / 3)  # a third of --learning-rate unless --decoder-lr
    assert plain["train"]["decoder_stage"] is None
    assert any("decoder stage: step 4/4" in line for line in logs)
    report = next(p for p in write_report(tmp_path / "staged") if p.suffix == ".md").read_text(encoding="utf-8")
    assert "then 4 decoder steps with the encoder frozen, LR 3.33e-05 cosine to 0" in report
    model = load_segmenter(tmp_path / "staged/runs/lora_cbo/seed0/adapter.pt")
    assert class_prompts_of(model) is not None
    with pytest.raises(ValueError, match="decoder_steps"):
        _config(datalist, tmp_path, decoder_steps=-1)
    with pytest.raises(ValueError, match="decoder_lr"):
        _config(datalist, tmp_path, decoder_steps=1, decoder_lr=0.0)


def test_the_decoder_stage_turns_a_frozen_adapters_dropout_off_so_its_embeddings_are_cached():
    """adapter_cbo's adapters have dropout 0.1: while they train, the encoder's output differs every step and
    only the stages before them are cached; in the decoder stage they are frozen, their dropout is off, and the
    whole embedding is cached. Training mode comes back after the stage."""
    model = build_segmenter("tiny_tinyvit", preset="adapter_cbo", seed=0).train()
    stages = len(encoder_stages(model.image_encoder))
    dropouts = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts and all(m.training for m in dropouts)
    assert frozen_prefix(model.image_encoder) < stages
    with frozen_encoder(model):
        model.train()  # as the trainer does every iteration
        assert frozen_prefix(model.image_encoder) == stages
        assert not any(m.training for m in dropouts) and model.mask_decoder.training
    assert frozen_prefix(model.image_encoder) < stages and all(m.training for m in dropouts)


def test_a_run_started_from_a_trained_adapter_continues_it(datalist, staged_runs, tmp_path):
    """--init-adapter: steps 0 scores the adapter as it is; a decoder stage from it gives the very adapter that
    the stage gives at the end of the run that made it; a file that cannot start the run is refused before any
    data is read, saying what to pass."""
    runs, _, whole, _ = staged_runs
    kw = STAGED
    init = runs / "plain/runs/lora_cbo/seed0/adapter.pt"
    as_is = run_bench(
        _config(datalist, tmp_path / "as_is", init_adapter=str(init), auto_z_smooth=0.5, **{**kw, "steps": 0})
    )[0]
    # --auto-z-smooth: one more automatic mode, the bundles' post-processing
    assert as_is["automatic"]["auto_lcc_smooth"]["config"] == {
        **as_is["automatic"]["auto_lcc"]["config"],
        "z_smooth": 0.5,
    }
    assert (tmp_path / "as_is/runs/lora_cbo/seed0/metrics_auto_lcc_smooth.csv").is_file()
    assert "| auto + lcc + smooth |" in next(
        p for p in write_report(tmp_path / "as_is") if p.suffix == ".md"
    ).read_text(encoding="utf-8")
    for name in ("metrics.csv", "metrics_auto.csv"):
        first = (runs / "plain/runs/lora_cbo/seed0" / name).read_text(encoding="utf-8")
        assert (tmp_path / "as_is/runs/lora_cbo/seed0" / name).read_text(encoding="utf-8") == first
    assert as_is["train"]["slices"] == 0 and as_is["train"]["init_adapter"]["path"] == str(init)
    saved = read_adapter(tmp_path / "as_is/runs/lora_cbo/seed0/adapter.pt")
    assert saved["metadata"]["init_adapter"]["sha256"] == as_is["train"]["init_adapter"]["sha256"]
    assert all(torch.equal(v, read_adapter(init)["state_dict"][k]) for k, v in saved["state_dict"].items())

    stage = dict(init_adapter=str(init), decoder_steps=4, decoder_lr=1e-4 / 3, **{**kw, "steps": 0})
    staged = run_bench(_config(datalist, tmp_path / "staged", **stage), log=lambda _: None)[0]
    assert staged["train"]["decoder_stage"]["loss"] == whole["train"]["decoder_stage"]["loss"]
    a = read_adapter(runs / "staged/runs/lora_cbo/seed0/adapter.pt")["state_dict"]
    b = read_adapter(tmp_path / "staged/runs/lora_cbo/seed0/adapter.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = next(p for p in write_report(tmp_path / "staged") if p.suffix == ".md").read_text(encoding="utf-8")
    assert f"from the trained adapter `{init}`, 0 steps" in report

    def refused(match, **change):
        with pytest.raises(ValueError, match=match):
            run_bench(_config(datalist, tmp_path / "refused", **{**stage, **change}), log=lambda _: None)
        assert not (tmp_path / "refused").exists()

    refused(r"adapter that does not match preset lora .*pass --presets lora_cbo", presets=["lora"])
    refused("pass --presets lora_cbo --rank 4", rank=8)
    refused("holds class prompts .*--auto-share", auto_share=0.0)
    refused("pass --model tiny_tinyvit", model="litemedsam")
    other = read_adapter(init)
    other["class_prompts"]["names"] = ["lower", "upper"]
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(BenchFailed, match=r"--init-adapter: .* for \['lower', 'upper'\] but the model was built"):
        run_bench(_config(datalist, tmp_path / "other", **{**stage, "init_adapter": str(tmp_path / "other.pt")}))
    with pytest.raises(ValueError, match="bench exactly that preset"):
        _config(datalist, tmp_path, **{**stage, "presets": ["lora", "lora_cbo"]})
    with pytest.raises(ValueError, match="steps may be 0 with an init_adapter"):
        _config(datalist, tmp_path, **{**kw, "steps": 0})
    # the command line takes the preset from the file
    out = tmp_path / "cli"
    args = ["bench", str(datalist), "-o", str(out), "--model", "tiny_tinyvit", "--seeds", "0", "--modality", "ct"]
    args += ["--window=-160,240", "--batch-size", "1", "--device", "cpu", "--auto-share", "0.75", "--steps", "0"]
    assert main([*args, "--init-adapter", str(init)]) == 0
    first = (runs / "plain/runs/lora_cbo/seed0/metrics.csv").read_text(encoding="utf-8")
    assert (out / "runs/lora_cbo/seed0/metrics.csv").read_text(encoding="utf-8") == first
    assert json.loads((out / "bench.json").read_text(encoding="utf-8"))["init_adapter"] == str(init)


def test_a_bench_made_before_automatic_steps_resumes_with_their_defaults(datalist, tmp_path):
    out = tmp_path / "bench"
    run_bench(_config(datalist, out, presets=["freeze"]), log=lambda _: None)
    saved = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    for key in ("auto_share", "background_ratio"):
        del saved[key]
    (out / "bench.json").write_text(json.dumps(saved), encoding="utf-8")
    run_bench(_config(datalist, out, presets=["freeze"]), log=lambda _: None)  # no "another budget" error
    with pytest.raises(ValueError, match="auto_share: 0.0 there, 0.5 now"):
        run_bench(_config(datalist, out, presets=["freeze"], auto_share=0.5), log=lambda _: None)


def test_report_tables_plots_and_overlays(datalist, tmp_path):
    out = tmp_path / "bench"
    run_bench(_config(datalist, out, presets=["freeze", "lora", "lora_cbo"], seeds=[0, 1]), log=lambda _: None)
    paths = write_report(out, overlays=1)
    md = paths[0].read_text(encoding="utf-8")
    for preset in ("freeze", "lora", "lora_cbo"):
        assert re.search(rf"^\| {preset} \|", md, re.M), preset
    assert "| lora_cbo − lora | left |" in md and "Pooled 2D Dice (the paper's metric)" in md
    assert "Dice left" in md and "Dice right" in md and "Dice both" in md and "right (region)" not in md
    figures = sorted(p.name for p in (out / "report_files").iterdir())
    assert "boxplot_left.svg" in figures and any(f.startswith("overlay_") for f in figures)
    html = paths[1].read_text(encoding="utf-8")
    assert html.count("<svg") == 3 and "data:image/png;base64," in html  # box plots: left, right, both
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # self-contained
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_report(out)
    (out / "report_files" / "overlay_99.png").write_bytes(b"stale")
    assert main(["report", str(out), "--overwrite"]) == 0
    assert not (out / "report_files" / "overlay_99.png").exists()


def test_report_of_a_folder_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="monai-cbo bench"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2


def test_cli_bench(datalist, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "bench",
            str(datalist),
            "-o",
            str(out),
            "--model",
            "tiny_tinyvit",
            "--presets",
            "freeze",
            "--seeds",
            "0",
            "--modality",
            "ct",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (out / "runs/freeze/seed0/metrics.csv").is_file()
    assert "monai-cbo report" in capsys.readouterr().out
    assert main(["bench", str(datalist), "-o", str(out), "--presets", "lora,bogus"]) == 2


def test_png_and_svg():
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (10, 20, 30)
    png = encode_png(rgb)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (4, 3)
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    raw = zlib.decompress(png[idat + 4 : idat + 4 + length])
    assert raw[1 * 13 + 1 + 2 * 3 : 1 * 13 + 1 + 3 * 3] == bytes((10, 20, 30))
    panel = overlay_panels(np.full((5, 6), 0.5), np.eye(5, 6, dtype=bool), np.zeros((5, 6), bool), scale=2)
    assert panel.shape == (10, 2 * (3 * 6 + 4), 3)
    svg = box_plot_svg({"a": [0.1, 0.5, 0.9, 0.95], "b": [float("nan")]}, "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 1 and "n=4" in svg


def test_largest_slice_overlay_picks_the_slice_and_stacks_one_row_per_prediction():
    """The slice shown is the one where the label is largest; each prediction gets a row, in the view
    (first axis across, second up), so a mask in the volume's first row appears at the panel's left edge."""
    gt = np.zeros((6, 5, 4), bool)
    gt[1:3, 1:3, 1] = True  # 4 voxels on slice 1
    gt[0:4, 0:4, 2] = True  # 16 voxels on slice 2: the largest
    pred = np.zeros_like(gt)
    pred[0, 4, 2] = True  # first axis 0 (left), second axis 4 (top after the flip)
    image = np.full(gt.shape, 0.5, np.float32)
    one, z = largest_slice_overlay(image, gt, [pred])
    two, _ = largest_slice_overlay(image, gt, [pred, np.zeros_like(gt)])
    assert z == 2
    scale = max(1, 192 // 6)
    assert one.shape == (5 * scale, 3 * 6 * scale + 4 * scale, 3)
    assert two.shape == (2 * one.shape[0] + 6, one.shape[1], 3)
    prediction_panel = one[:, 2 * (6 + 2) * scale :]
    red = prediction_panel[..., 0].astype(int) - prediction_panel[..., 1] > 30
    rows, cols = np.nonzero(red)
    assert rows.max() < scale and cols.max() < scale  # the top-left pixel of the panel
    with pytest.raises(ValueError, match="at least one prediction"):
        largest_slice_overlay(image, gt, [])


def test_speedups_keep_outputs_and_report_ratios(capsys):
    """Each kept CPU speed-up must leave outputs unchanged: the caches and inference_mode bitwise."""
    assert main(["speed", "--speedups", "--no-compile", "--model", "tiny_tinyvit", "--steps", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)["speedups"]
    for name in ("frozen_front_cache", "embedding_cache", "inference_mode"):
        assert figures[name]["max_abs_diff"] == 0.0, name
        assert figures[name]["speedup"] > 0
    assert figures["channels_last"]["max_abs_diff"] < 1e-3


def test_a_bench_saved_under_the_former_setting_names_reads_and_resumes(datalist, tmp_path):
    """bench.json files written before the settings took the bundles' names (lr, batch, jitter, min_pixels) read
    as the same config, and a bench started then resumes with the new option names."""
    from monai_cbo.bench.config import FORMER_NAMES, _check_config

    published = Path(__file__).parents[2] / "docs" / "benchmarks" / "automatic" / "decoder_stage" / "bench.json"
    saved = json.loads(published.read_text(encoding="utf-8"))
    config = BenchConfig.from_saved(saved)
    assert (config.learning_rate, config.batch_size, config.box_jitter) == (
        saved["lr"],
        saved["batch"],
        saved["jitter"],
    )
    assert config.min_foreground == saved["min_pixels"]
    new = _config(datalist, tmp_path, learning_rate=3e-4, box_jitter=3)
    old = {next((f for f, n in FORMER_NAMES.items() if n == k), k): v for k, v in dataclasses.asdict(new).items()}
    assert "lr" in old and "learning_rate" not in old
    (tmp_path / "bench.json").write_text(json.dumps(old), encoding="utf-8")
    _check_config(new, tmp_path / "bench.json")  # the same budget under its former names: resumes
    with pytest.raises(ValueError, match="learning_rate: 0.0003 there, 0.0001 now"):
        _check_config(_config(datalist, tmp_path, box_jitter=3), tmp_path / "bench.json")
