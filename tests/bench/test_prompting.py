"""monai-cbo prompts-bench: protocols from a label, the sweep's truncated recordings against real propagation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import monai_cbo.bench.propagation_sweep as propagation_sweep
from monai_cbo.bench.prompting import protocol_prompt, read_suite, run_prompts_bench
from monai_cbo.bench.propagation_sweep import _ceiling_dice, _record, _stop_grid, _track_dice
from monai_cbo.bench.protocols import _load, _score
from monai_cbo.cli import main
from monai_cbo.data.demo import make_demo_case
from monai_cbo.inferers import ObjectPrompt, PropagationConfig, SliceResult, SliceWiseInferer
from monai_cbo.models import build_segmenter
from monai_cbo.networks import SliceCache, build_model


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """Two small synthetic CT cases, one to tune on, one held back."""
    root = tmp_path_factory.mktemp("suite")
    cases = []
    for i, part in enumerate(("tune", "validation")):
        image, label, affine = make_demo_case(200 + i, shape=(40, 40, 9))
        nib.save(nib.Nifti1Image(image, affine), root / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / f"lab{i}.nii.gz")
        cases.append({"case": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "part": part})
    path = root / "suite.json"
    path.write_text(
        json.dumps({"sets": {"demo": {"modality": "ct", "targets": {"organ": [1]}, "cases": cases}}}), encoding="utf-8"
    )
    return path


def test_protocols_take_their_prompts_from_the_label():
    mask = np.zeros((20, 20, 12), dtype=bool)
    for z, r in zip(range(3, 10), (1, 2, 3, 4, 3, 2, 1), strict=True):
        mask[10 - r : 10 + r, 10 - r : 10 + r, z] = True
    assert sorted(protocol_prompt(mask, "per_slice")) == list(range(3, 10))
    one = protocol_prompt(mask, "one_key")
    assert [k.slice for k in one.keys] == [6] and one.z_range is None
    box = protocol_prompt(mask, "box3d")
    assert [k.slice for k in box.keys] == [6] and box.z_range == (3, 9)
    assert [k.slice for k in protocol_prompt(mask, "three_keys").keys] == [3, 6, 9]
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_prompt(mask, "two_keys")


def test_truncated_recordings_score_every_stop_rule_as_the_real_propagation_does(suite):
    """The sweep's shortcut: one propagation recorded with the stop rules off, then truncated, gives the same Dice
    as running the propagation with each rule set (checked on a few combinations, every protocol)."""
    inferer = SliceWiseInferer(build_model("tiny"), decode_memo=SliceCache(None))
    [case, _] = read_suite(suite, suite.parent)
    loaded = _load(case, None, "tiny")
    mask = loaded.masks["organ"]
    combos, grid = _stop_grid()
    start = PropagationConfig(margin=0.1, min_margin=1.0)
    rng = np.random.default_rng(0)
    picks = list(rng.choice(len(combos), 6, replace=False))
    waiting = [i for i, c in enumerate(combos) if c["patience"] > 1 and c["min_iou"] == 0.8 and c["max_growth"] < 2]
    picks += list(rng.choice(waiting, 4, replace=False))  # patience: a run of broken slices, not the first one
    for protocol in ("one_key", "box3d", "three_keys"):
        track = _record(inferer, loaded, mask, protocol, start)
        predicted = _track_dice(track, grid, start.min_area)
        assert predicted.max() <= _ceiling_dice(track) + 1e-12  # no rule beats a perfect stop
        for i in picks:  # the open rules and the 3D box's range_ rules set to the same combination
            config = start.replace(**combos[i], **{f"range_{k}": v for k, v in combos[i].items()})
            [row] = [r for r in _score(inferer, loaded, [protocol], config) if r["target"] == "organ"]
            assert predicted[i] == pytest.approx(row["dice"], abs=1e-9), (protocol, combos[i])


def test_the_learned_stop_is_recorded_and_truncated_as_the_real_propagation_applies_it(suite):
    """With a model that has class prompts, the recordings carry the learned stop's measure and truncating them
    at ``min_class_overlap`` gives the real propagation's Dice. The decoder is replaced by the label (inside the
    prompt's box for a box, on the interior slices only for the class prompt): the logic alone, no network."""
    model = build_segmenter("tiny", preset="full", class_names=["organ", "other"]).eval()
    inferer = SliceWiseInferer(model, decode_memo=SliceCache(None))
    [case, _] = read_suite(suite, suite.parent)
    loaded = _load(case, None, "tiny+classes")
    mask = loaded.masks["organ"]
    present = np.nonzero(mask.any(axis=(0, 1)))[0]
    seen = set(range(int(present[0]) + 1, int(present[-1])))  # the 'adapter' misses the object's end slices
    low = inferer.model.low_res_size
    embeddings = dict(inferer.encode(loaded.volume, range(mask.shape[-1]), loaded.cache))

    def slice_of(embedding):  # the cache hands out the very tensors it holds
        return next(z for z, e in embeddings.items() if e is embedding)

    def decode(embedding, prompts, size):
        z = slice_of(embedding)
        out = []
        for p in prompts:
            x0, y0, x1, y1 = (int(round(v)) for v in p.box)
            prob = torch.zeros(size)
            prob[y0 : y1 + 1, x0 : x1 + 1] = torch.as_tensor(mask[y0 : y1 + 1, x0 : x1 + 1, z]).float()
            out.append(SliceResult(prob, 0.9, torch.zeros(low, low)))
        return out

    def decode_classes(embedding, size):  # class 1 is the organ on the slices it sees; class 0 is never there
        z = slice_of(embedding)
        organ = torch.as_tensor(mask[..., z] if z in seen else np.zeros(size, dtype=bool)).float()
        return [
            SliceResult(torch.zeros(size), 0.1, torch.zeros(low, low)),
            SliceResult(organ, 0.9, torch.zeros(low, low)),
        ]

    inferer.decode, inferer.decode_classes = decode, decode_classes
    combos, grid = _stop_grid()
    start = PropagationConfig(margin=0.1, min_margin=1.0)
    lenient = [i for i, c in enumerate(combos) if c["min_similarity"] == -1 and c["max_key_area"] > 100]
    learned = [i for i in lenient if combos[i]["min_class_overlap"] >= 0.5][:3]
    learned += [i for i in lenient if combos[i]["min_class_overlap"] == 0.5 and combos[i]["patience"] > 1][:2]
    off = [i for i in lenient if combos[i]["min_class_overlap"] == 0][:2]
    for protocol in ("one_key", "box3d"):
        track = _record(inferer, loaded, mask, protocol, start)
        assert any((d.measures.class_overlap < 1).any() for d in track.directions)  # measured, not the default 1
        predicted = _track_dice(track, grid, start.min_area)
        assert predicted[learned[0]] < predicted[off[0]]  # the 'adapter' cuts the ends off: the rule bites
        for i in learned + off:
            config = start.replace(**combos[i], **{f"range_{k}": v for k, v in combos[i].items()})
            [row] = [r for r in _score(inferer, loaded, [protocol], config) if r["target"] == "organ"]
            assert predicted[i] == pytest.approx(row["dice"], abs=1e-9), (protocol, combos[i])


def test_truncation_keeps_the_slices_before_the_first_run_of_patience_broken_slices():
    """``_kept``: how many recorded slices a direction keeps under each patience, as ``propagate`` walks."""
    from monai_cbo.bench.propagation_sweep import _kept

    broken = np.array([0, 1, 0, 1, 1, 0, 1], dtype=bool)  # slice 1 alone, 3-4 in a pair, 6 at the walk's end
    stop = np.repeat(broken[:, None], 3, axis=1)
    assert _kept(stop, np.array([[1, 2, 3]])).tolist() == [1, 3, 6]
    assert _kept(np.zeros((4, 2), dtype=bool), np.array([[1, 3]])).tolist() == [4, 4]  # nothing breaks
    assert _kept(np.ones((2, 1), dtype=bool), np.array([[3]])).tolist() == [0]  # a run cut short by the end


def test_near_ties_go_to_the_most_lenient_rules_within_the_tolerance():
    from monai_cbo.bench.propagation_sweep import _lenient_best

    scores = np.array([0.70, 0.74, 0.745, 0.75])  # the strictest rules score best by a little
    lenient = np.array([0.0, 1.0, 2.0, 3.0])  # strictness: 0 is every rule off
    assert _lenient_best(scores, lenient) == 3  # the default tolerance (0.001): the best
    assert _lenient_best(scores, lenient, tie=0.006) == 2
    assert _lenient_best(scores, lenient, tie=0.01) == 1
    assert _lenient_best(scores, lenient, tie=0.1) == 0


def test_without_class_prompts_the_sweep_does_not_vary_the_learned_stop():
    full, _ = _stop_grid()
    plain, grid = _stop_grid(learned=False)
    assert {c["min_class_overlap"] for c in plain} == {0.0}
    assert len(full) == len(plain) * len(propagation_sweep.STOP_GRID["min_class_overlap"])
    assert grid.patience.shape == grid.range_patience.shape == (1, len(plain))


def test_a_sweep_tunes_on_the_tune_part_only_and_writes_its_tables(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(propagation_sweep, "TRAJECTORY_GRID", {"margin": [0.0, 0.1], "min_margin": [1.0]})
    monkeypatch.setattr(propagation_sweep, "STOP_GRID", {**propagation_sweep.STOP_GRID, "min_iou": [0.0, 0.5]})
    result = run_prompts_bench(
        suite,
        suite.parent,
        tmp_path / "out",
        build_model("tiny"),
        "tiny",
        sweep=True,
        cache_dir=tmp_path / "emb",
        log=lambda _: None,
    )
    assert set(result["parts"]) == {"tune", "validation"}
    assert {"one_key", "box3d", "three_keys", "per_slice"} <= set(result["parts"]["validation"]["demo"])
    for name in ("rows.csv", "summary.json", "summary.md", "sweep.csv", "sweep.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    sweep = (tmp_path / "out" / "sweep.csv").read_text(encoding="utf-8")
    assert "min_overlap" in sweep and "range_min_overlap" in sweep and "neighbour_weight" in sweep
    tables = (tmp_path / "out" / "sweep.md").read_text(encoding="utf-8")
    assert "3D boxes: the best combinations" in tables and "perfect stop rule" in tables
    config = result["config"]
    assert {"min_iou", "range_min_iou"} <= set(config) and "stop_in_range" not in config
    assert list((tmp_path / "emb").glob("c0__*.pt")) and list((tmp_path / "emb").glob("c1__*.pt"))


def test_the_command_scores_a_suite_with_given_settings(suite, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["prompts-bench", str(suite), "-o", str(out), "--data-root", str(suite.parent), "--model", "tiny"]
    assert main([*base, "--set", "min_overlap=0.3", "--set", "mask_prompt=true"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["config"]["min_overlap"] == 0.3 and summary["config"]["mask_prompt"] is True
    assert "one key box" in capsys.readouterr().out
    assert main([*base, "--set", "min_overlapp=0.3"]) == 2
    assert "unknown propagation setting" in capsys.readouterr().err


def test_two_adapters_of_the_same_file_name_never_share_cached_embeddings(suite, tmp_path):
    """The embedding cache is keyed by the adapter's content, not its name: adapter.pt from two trainings."""
    from monai_cbo.models import build_segmenter
    from monai_cbo.peft import save_adapter

    adapters = []
    for shift in (0.1, 0.2):
        trained = build_segmenter("tiny", preset="lora_cbo")
        with torch.no_grad():
            for p in trained.parameters():
                if p.requires_grad:
                    p.add_(shift)
        adapters.append(save_adapter(trained, tmp_path / f"run{shift}" / "adapter.pt"))
    for n, adapter in enumerate(adapters):
        base = ["prompts-bench", str(suite), "-o", str(tmp_path / f"out{n}"), "--data-root", str(suite.parent)]
        assert main([*base, "--model", "tiny", "--adapter", str(adapter), "--cache-dir", str(tmp_path / "emb")]) == 0
    assert len(list((tmp_path / "emb").glob("c0__*.pt"))) == 2


def test_a_suite_whose_files_are_missing_names_the_data_root(suite, tmp_path):
    with pytest.raises(FileNotFoundError, match="give --data-root"):
        read_suite(suite, tmp_path)
    assert isinstance(protocol_prompt(np.ones((4, 4, 3), bool), "box3d"), ObjectPrompt)


def test_a_sets_ct_window_reaches_the_model_input_and_keys_the_embedding_cache(suite, tmp_path):
    """Two sets of one case under two CT windows: each is read with its window, and their embeddings are cached
    apart (the same key for both would answer one window's prompts with the other's embeddings)."""
    from monai_cbo.bench.protocols import _load

    spec = json.loads(suite.read_text(encoding="utf-8"))["sets"]["demo"]
    sets = {name: {**spec, "ct_window": window} for name, window in (("soft", [-160, 240]), ("wide", [-1000, 1000]))}
    windowed = tmp_path / "suite.json"
    windowed.write_text(json.dumps({"sets": sets}), encoding="utf-8")
    cases = read_suite(windowed, suite.parent)
    assert [c.ct_window for c in cases] == [(-160.0, 240.0)] * 2 + [(-1000.0, 1000.0)] * 2
    soft, wide = (_load(c, tmp_path / "emb", "tiny") for c in (cases[0], cases[2]))
    assert not torch.equal(soft.volume, wide.volume)  # another window, another input
    assert soft.cache.path != wide.cache.path
    assert [c.ct_window for c in read_suite(suite, suite.parent)] == [None, None]  # absent: Preprocess's default


def test_a_model_with_class_prompts_is_also_scored_without_any_prompt(suite, tmp_path, monkeypatch):
    """The automatic protocol: the class prompts' label map on every slice, scored like the prompt protocols and
    kept out of the sweep's objective. Here the class prompts 'say' every pixel is the organ, so its Dice and the
    slices it predicts outside the organ are known exactly."""
    from monai_cbo.bench.protocols import objective
    from monai_cbo.inferers.slicewise import SliceResult

    model = build_segmenter("tiny", preset="full", class_names=["organ"]).eval()

    def everywhere(self, embedding, size):
        return [SliceResult(torch.ones(size), 1.0, torch.zeros(model.low_res_size, model.low_res_size))]

    monkeypatch.setattr(SliceWiseInferer, "decode_classes", everywhere)
    result = run_prompts_bench(suite, suite.parent, tmp_path / "out", model, "tiny+classes", log=lambda _: None)
    rows = list(csv.DictReader(open(tmp_path / "out" / "rows.csv", encoding="utf-8")))
    automatic = [r for r in rows if r["protocol"] == "automatic"]
    assert len(automatic) == 2  # one per case and target
    for row in automatic:
        [case] = [c for c in read_suite(suite, suite.parent) if c.name == row["case"]]
        truth = _load(case, None, "x").masks["organ"]
        assert float(row["dice"]) == pytest.approx(2 * truth.sum() / (truth.sum() + truth.size), abs=1e-6)
        assert int(row["slices_outside"]) == truth.shape[-1] - int(row["true_slices"])
    assert "automatic" in result["parts"]["validation"]["demo"]
    for r in rows:
        r.update(dice=float(r["dice"]), **{k: int(r[k]) for k in ("slices_outside", "max_beyond", "true_slices")})
    assert objective(rows) == objective([r for r in rows if r["protocol"] != "automatic"])


def test_the_interactive_protocol_clicks_where_the_mask_is_wrong_and_times_each_round(suite, tmp_path, capsys):
    """--clicks: the 3D box (round 0, the same masks as the box3d protocol), then one simulated click per round
    from the current error, every earlier click kept; each round's Dice, time and slices changed in rows.csv, the
    rounds' table in summary.md, and none of it in the sweep's objective."""
    from monai_cbo.bench.protocols import objective

    out = tmp_path / "clicks"
    base = ["prompts-bench", str(suite), "-o", str(out), "--data-root", str(suite.parent), "--model", "tiny"]
    assert main([*base, "--clicks", "2", "--click-start"]) == 0
    rows = list(csv.DictReader(open(out / "rows.csv", encoding="utf-8")))
    for case in ("c0", "c1"):
        mine = {r["protocol"]: r for r in rows if r["case"] == case}
        assert {"clicks0", "clicks1", "clicks2", "fromclick0", "fromclick1", "fromclick2"} <= set(mine)
        assert float(mine["clicks0"]["dice"]) == pytest.approx(float(mine["box3d"]["dice"]), abs=1e-9)
        for k in ("clicks1", "clicks2", "fromclick1", "fromclick2"):
            assert float(mine[k]["seconds"]) >= 0 and 0 <= int(mine[k]["slices_changed"]) <= 9
            # a round decodes again only slices whose prompt it changed: never more than the walk reaches
            assert 0 <= int(mine[k]["slices_decoded"]) <= 9
        assert int(mine["clicks0"]["slices_decoded"]) >= int(mine["clicks0"]["predicted_slices"])
        assert mine["box3d"]["seconds"] == ""  # the other protocols' rows leave the interactive columns empty
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "interactive protocol (a 3D box" in summary and "interactive protocol (one foreground click" in summary
    assert "2 clicks" in capsys.readouterr().out
    for r in rows:
        r.update(dice=float(r["dice"]), **{k: int(r[k]) for k in ("slices_outside", "max_beyond", "true_slices")})
    interactive = ("clicks", "fromclick")
    assert objective(rows) == objective([r for r in rows if not r["protocol"].startswith(interactive)])
    assert main([*base, "--clicks", "99", "-o", str(tmp_path / "never")]) != 0
    assert main([*base, "--click-start", "-o", str(tmp_path / "never")]) != 0  # a click start needs --clicks
