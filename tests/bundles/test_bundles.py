"""The three bundles: their configs parse and resolve, and each trains one tiny epoch and evaluates on real volumes.

Spleen and multi-organ CT run on the TotalSegmentator example CT (model-made labels, fine for the pipeline); the
BraTS bundle on one BRATS 2015 case (its datalist written by ``data_prep/brats.py``). One case serves as training,
validation and test set. ``--model#name tiny`` (a random 4-block ViT at 128 px) keeps each run to seconds.
"""

from __future__ import annotations

import configparser
import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import run_bundle
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Invertd
from realdata import shared_data

from data_prep import brats
from monai_cbo.adapt import Recipe, bundle_recipe
from monai_cbo.handlers import CaseMetricsWriter, LabelMapWriter
from monai_cbo.inferers import AutoConfig, Preprocess, SliceWiseInferer
from monai_cbo.inferers.engine import AutoVolumeInferer
from monai_cbo.models import build_segmenter
from monai_cbo.peft import read_adapter, save_adapter

REPO = Path(__file__).resolve().parents[2]
BUNDLES = ("spleen_ct_cbo", "organ_ct_cbo", "brats_mri_cbo", "hippocampus_mri_cbo")
CONFIG_FILES = (
    "train.json",
    "evaluate.json",
    "inference.json",
    "multi_gpu_train.json",
    "metadata.json",
    "logging.conf",
)
OVERRIDE_FILES = ("evaluate.json", "multi_gpu_train.json")  # merged over train.json
BRATS_CASE = "brats_2013_pat0004_1"  # the one with the fewest tumour slices of the four
# the 2015 convention's label values, and what the written map holds for WT, TC, ET (later over earlier)
BRATS_LABELS, BRATS_WRITTEN = [1, 2, 3, 4], [2, 1, 4]


@dataclass
class Data:
    """A bundle's data: ``dataset_dir`` holds the files the ``datalist`` names; ``image`` is the test case's
    (first) image file, whose geometry the written segmentation must have."""

    dataset_dir: Path
    datalist: Path
    image: Path


def _configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def _one_case_datalist(case: dict, path: Path, **extra) -> Path:
    path.write_text(
        json.dumps({**extra, "training": [case], "validation": [case], "test": [case]}, indent=2), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Data]:
    """Per bundle: one real case as training, validation and test set."""
    root = tmp_path_factory.mktemp("datalists")
    ct = shared_data("TotalSegmentator_examples")
    ct_case = {"image": "example_ct_sm.nii.gz", "label": "example_seg.nii.gz"}
    ct_datalist = _one_case_datalist(ct_case, root / "ct.json")
    brats_dir = shared_data("BraTS2015_deepmedic")
    assert brats.main([str(brats_dir), "-o", str(root / "brats_all.json"), "--modalities", "Flair,T1c"]) == 0
    written = json.loads((root / "brats_all.json").read_text(encoding="utf-8"))
    cases = written["training"] + written["validation"] + written["test"]
    case = next(c for c in cases if c["label"].startswith(f"{BRATS_CASE}/"))
    brats_datalist = _one_case_datalist(case, root / "brats.json", label_convention=written["label_convention"])
    hippo = shared_data("Task04_Hippocampus")
    hippo_case = {"image": "imagesTr/hippocampus_001.nii.gz", "label": "labelsTr/hippocampus_001.nii.gz"}
    hippo_datalist = _one_case_datalist(hippo_case, root / "hippocampus.json")
    return {
        "spleen_ct_cbo": Data(ct, ct_datalist, ct / ct_case["image"]),
        "organ_ct_cbo": Data(ct, ct_datalist, ct / ct_case["image"]),
        "brats_mri_cbo": Data(brats_dir, brats_datalist, brats_dir / case["image"][0]),
        "hippocampus_mri_cbo": Data(hippo, hippo_datalist, hippo / hippo_case["image"]),
    }


def _parser(bundle: str, *files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(_configs(bundle) / f) for f in files])
    parser.update(overrides)
    return parser


def _train_parser(bundle: str, data: Data, tmp_path: Path, *extra_files: str, **overrides) -> ConfigParser:
    """train.json (+ override files) with the tiny model, the test data and nothing cached."""
    return _parser(
        bundle,
        "train.json",
        *extra_files,
        **{
            "model#name": "tiny",
            "dataset_dir": str(data.dataset_dir),
            "datalist": str(data.datalist),
            "output_dir": str(tmp_path / "out"),
            "cache_rate": 0.0,
            "device": "$torch.device('cpu')",
            **overrides,
        },
    )


def _ids(config) -> set[str]:
    """Every ``@id`` referenced in a (nested) config."""
    if isinstance(config, dict):
        config = list(config.values())
    if isinstance(config, list):
        return set().union(*map(_ids, config))
    return set(re.findall(r"@([\w#]+)", config)) if isinstance(config, str) else set()


# ---- (a) the configs parse and resolve without training


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_the_model_zoo_file_set(bundle):
    for name in CONFIG_FILES:
        assert (_configs(bundle) / name).is_file(), f"{bundle} lacks configs/{name}"
    assert (REPO / "bundles" / bundle / "docs" / "README.md").is_file()
    logging_conf = configparser.ConfigParser()
    logging_conf.read(_configs(bundle) / "logging.conf")
    assert logging_conf["loggers"]["keys"] == "root"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_has_the_monai_fields(bundle):
    meta = json.loads((_configs(bundle) / "metadata.json").read_text(encoding="utf-8"))
    for key in (
        "schema",
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "data_source",
        "data_type",
        "image_classes",
        "label_classes",
        "pred_classes",
        "eval_metrics",
        "intended_use",
        "references",
        "network_data_format",
    ):
        assert meta.get(key) not in (None, ""), f"{bundle}/metadata.json lacks {key}"
    assert meta["version"] in meta["changelog"]
    assert meta["required_packages_version"]["monai-cbo"]
    formats = meta["network_data_format"]
    assert "image" in formats["inputs"] and "pred" in formats["outputs"]
    for item in (*formats["inputs"].values(), *formats["outputs"].values()):
        for key in (
            "type",
            "format",
            "num_channels",
            "spatial_shape",
            "dtype",
            "value_range",
            "is_patch_data",
            "channel_def",
        ):
            assert key in item, f"{bundle}/metadata.json: a network_data_format entry lacks {key}"
        assert item["num_channels"] == len(item["channel_def"])
    assert formats["inputs"]["image"]["num_channels"] == 3  # a SAM image encoder's input


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    "files",
    [("train.json",), ("train.json", "evaluate.json"), ("train.json", "multi_gpu_train.json"), ("inference.json",)],
)
def test_every_referenced_id_exists(bundle, files):
    parser = _parser(bundle, *files)
    missing = sorted(i for i in _ids(parser.get()) if i not in parser)
    assert not missing, f"{bundle} {files}: references to undefined ids {missing}"


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("override", OVERRIDE_FILES)
def test_override_files_replace_train_keys_instead_of_copying(bundle, override):
    train = json.loads((_configs(bundle) / "train.json").read_text(encoding="utf-8"))
    keys = json.loads((_configs(bundle) / override).read_text(encoding="utf-8"))
    parser = _parser(bundle, "train.json")
    for key in keys:
        assert key not in ("train", "validate", "network_def"), f"{override} copies the whole {key!r} section"
        if "#" in key:  # a nested override must land in a section train.json has
            assert key.rsplit("#", 1)[0] in parser, f"{override}: {key} overrides nothing in train.json"
    assert set(keys) & set(train)  # it does override something


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_json_trains_with_the_recipe_adapt_and_the_label_server_use(bundle):
    """One recipe: train.json's values are its ``recipe``'s (the library's Recipe, with the bundle's own values),
    which is what monai-cbo adapt --bundle and the label server's train task start from."""
    parser = _parser(bundle, "train.json")
    recipe = parser.get_parsed_content("recipe")
    assert recipe == bundle_recipe(_configs(bundle).parent)
    assert recipe == Recipe()  # no shipped bundle sets its own values yet
    for key in ("learning_rate", "batch_size", "box_jitter", "min_foreground", "auto_share", "background_ratio"):
        assert parser.get_parsed_content(key) == getattr(recipe, key), key
    assert parser.get_parsed_content("peft") == {"preset": recipe.preset, "rank": recipe.rank}
    parser["seed"] = 7  # the config's seed is the recipe's
    assert parser.get_parsed_content("recipe", lazy=False).seed == 7


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_config_resolves_trainer_and_evaluator(bundle, data, tmp_path):
    parser = _train_parser(bundle, data[bundle], tmp_path)
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert isinstance(trainer, SupervisedTrainer) and isinstance(evaluator, SupervisedEvaluator)
    assert trainer.state.max_epochs == parser["max_epochs"] and len(trainer.data_loader.dataset) == 1
    assert parser.get_parsed_content("img_size") == 128  # the tiny model's input
    # automatic steps by default: the network has class prompts and validation runs without prompts
    network, task = parser.get_parsed_content("network"), parser.get_parsed_content("task")
    assert isinstance(evaluator.inferer, AutoVolumeInferer)
    assert list(network.class_prompts.class_names) == parser["task#class_names"]
    assert network.class_prompts.exclusive is task.exclusive
    assert list(network.class_prompts.class_values) == list(task.label_values)
    assert trainer.prepare_batch.auto_share == bundle_recipe(_configs(bundle).parent).auto_share
    prompted = _train_parser(bundle, data[bundle], tmp_path, auto_share=0)
    assert prompted.get_parsed_content("network").class_prompts is None
    assert prompted.get_parsed_content("validate#evaluator").inferer.exclusive is task.exclusive
    names = parser["task#class_names"]
    if bundle == "brats_mri_cbo":
        assert names == ["WT", "TC", "ET"] and task.exclusive is False
        assert parser.get_parsed_content("sample_classes") == BRATS_LABELS
        assert list(task.preprocess.channels) == [0, 1] and task.regions == "2015"
        assert (
            json.loads(data[bundle].datalist.read_text(encoding="utf-8"))["label_convention"] == "2015"
        )  # data_prep/brats.py's
    else:
        assert len(names) == len(task.classes) and task.exclusive is True


def test_training_starts_from_a_given_adapter_and_refuses_one_that_does_not_fit(tmp_path):
    """``--init_adapter``: fine-tune a trained adapter (a shipped one) on new data instead of the preset's
    initial weights. The network the trainer gets holds the file's weights; a file of another preset or other
    classes is refused, naming what differs."""
    bundle = "hippocampus_mri_cbo"  # adapter_cbo, classes anterior / posterior
    base = _parser(bundle, "train.json", **{"model#name": "tiny", "device": "$torch.device('cpu')"})
    trained = build_segmenter("tiny", preset="adapter_cbo", seed=0, class_names=["anterior", "posterior"])
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # unlike any fresh build
    path = save_adapter(trained, tmp_path / "adapter.pt")
    fresh = base.get_parsed_content("network")
    parser = _parser(bundle, "train.json", **{"model#name": "tiny", "device": "$torch.device('cpu')"})
    parser["init_adapter"] = str(path)
    network = parser.get_parsed_content("network")
    state = read_adapter(path)["state_dict"]
    params = dict(network.named_parameters())
    assert state.keys() == {n for n, p in params.items() if p.requires_grad}
    assert all(torch.equal(params[n], v) for n, v in state.items())
    assert not torch.equal(
        dict(fresh.named_parameters())["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"]
    )
    for model, match in (
        (
            build_segmenter("tiny", preset="lora_cbo", class_names=["anterior", "posterior"]),
            "preset: checkpoint has 'lora_cbo'",
        ),
        (
            build_segmenter("tiny", preset="adapter_cbo", class_names=["posterior", "anterior"]),
            r"class prompts for \['posterior'",
        ),
    ):
        other = _parser(bundle, "train.json", **{"model#name": "tiny", "device": "$torch.device('cpu')"})
        other["init_adapter"] = str(save_adapter(model, tmp_path / "other.pt", overwrite=True))
        with pytest.raises(RuntimeError, match="build_segmenter") as failed:
            other.get_parsed_content("network")
        assert re.search(match, str(failed.value.__cause__))  # MONAI shows this, the cause, in the traceback


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_config_resolves_with_writers_in_the_convention(bundle, data, tmp_path):
    parser = _train_parser(bundle, data[bundle], tmp_path, "evaluate.json", adapter=None)
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert isinstance(evaluator, SupervisedEvaluator)
    assert isinstance(parser.get_parsed_content("validate#postprocessing"), Invertd)
    handlers = parser.get_parsed_content("validate#handlers")
    writer = next(h for h in handlers if isinstance(h, LabelMapWriter))
    assert any(isinstance(h, CaseMetricsWriter) for h in handlers)
    expected = BRATS_WRITTEN if bundle == "brats_mri_cbo" else parser["task#classes"]
    assert list(writer.to_labels.values) == expected


@pytest.mark.parametrize(
    ("convention", "labels", "written"),
    [
        ("2015", [1, 2, 3, 4], [2, 1, 4]),
        ("2021", [1, 2, 4], [2, 1, 4]),
        (2021, [1, 2, 4], [2, 1, 4]),
        ("2023", [1, 2, 3], [2, 1, 3]),
    ],
)
def test_brats_label_convention_sets_sampled_labels_and_written_values(convention, labels, written, data, tmp_path):
    parser = _train_parser(
        "brats_mri_cbo", data["brats_mri_cbo"], tmp_path, "evaluate.json", **{"task#regions": convention}
    )
    assert parser.get_parsed_content("sample_classes") == labels
    assert list(parser.get_parsed_content("task").label_values) == written
    regions = parser.get_parsed_content("label_channels")
    label = torch.tensor(labels, dtype=torch.float32).reshape(1, -1, 1, 1)
    out = regions({"label": label})["label"]  # WT holds every tumour label, ET only the last
    assert out.shape[0] == 3 and out[0].all() and out[2].sum() == 1


def test_brats_takes_a_custom_region_mapping_with_its_written_values(data, tmp_path):
    msd = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}  # MSD Task01: 1 edema, 2 non-enhancing, 3 enhancing
    parser = _train_parser(
        "brats_mri_cbo",
        data["brats_mri_cbo"],
        tmp_path,
        "evaluate.json",
        adapter=None,
        **{"task#regions": msd, "task#label_values": [1, 2, 3]},
    )
    assert parser.get_parsed_content("sample_classes") == [1, 2, 3]
    writer = next(h for h in parser.get_parsed_content("validate#handlers") if isinstance(h, LabelMapWriter))
    assert list(writer.to_labels.values) == [1, 2, 3]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_config_resolves_with_the_training_preprocessing(bundle, data, tmp_path):
    parser = _parser(
        bundle,
        "inference.json",
        adapter=None,
        **{"model#name": "tiny"},
        input=str(data[bundle].image),
        output_dir=str(tmp_path / "inference"),
        key_box=[10, 10, 1, 30, 30, 1],
    )
    assert isinstance(parser.get_parsed_content("inferer"), SliceWiseInferer)
    cases = parser.get_parsed_content("cases")
    assert len(cases) == 1 and cases[0].key is not None and cases[0].auto is None
    pre = parser.get_parsed_content("task").preprocess
    assert isinstance(pre, Preprocess)
    assert pre == _parser(bundle, "train.json").get_parsed_content("task").preprocess  # one task, both configs
    if bundle == "brats_mri_cbo":  # inference scales MRI between the 0.5th and 99.5th percentiles, as training
        assert pre.modality == "mri" and list(pre.channels) == [0, 1] and pre.mri_percentiles == (0.5, 99.5)
    elif bundle == "hippocampus_mri_cbo":
        assert pre.modality == "mri" and pre.channels is None and pre.mri_percentiles == (0.5, 99.5)
    else:
        assert pre.modality == "ct" and pre.ct_window[1] - pre.ct_window[0] <= 425  # a window for soft tissue


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_without_a_prompt_runs_automatically(bundle, data, tmp_path):
    overrides = {
        "model#name": "tiny",
        "input": str(data[bundle].image),
        "task#auto#largest_component": True,
        "task#auto#z_smooth": 0.25,
    }
    parser = _parser(bundle, "inference.json", adapter=None, **overrides)
    (case,) = parser.get_parsed_content("cases")
    assert case.auto == AutoConfig(largest_component=True, z_smooth=0.25)
    assert case.key is None and case.prompt_file is None


def test_written_configs_are_the_shared_base_plus_each_task():
    result = subprocess.run(
        [sys.executable, "bundles/build_configs.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_config_builder_merges_like_monai_and_reports_stale_files(tmp_path, monkeypatch):
    from monai_cbo.bundle_configs import merge

    sys.path.insert(0, str(REPO / "bundles"))
    try:
        import build_configs
    finally:
        sys.path.remove(str(REPO / "bundles"))
    base = {"a": 1, "net": {"x": [1, 2]}, "anchor": 0, "gone": 5}
    merged = merge(base, {"new": 7, "a": 2, "net#x#1": 9, "_remove_": ["gone"]}, anchor="anchor")
    assert list(merged) == ["a", "net", "new", "anchor"] and merged["a"] == 2 and merged["net"]["x"] == [1, 9]
    assert base["net"]["x"] == [1, 2]  # the base is not modified
    with pytest.raises(KeyError, match="nope"):
        merge(base, {"nope#b": 1})
    # a hand edit of a written config is caught, with the fix
    monkeypatch.setattr(build_configs, "ROOT", tmp_path)
    (tmp_path / "spleen_ct_cbo" / "configs").mkdir(parents=True)
    assert build_configs.main(["--check"]) == 1
    assert build_configs.main([]) == 0 and build_configs.main(["--check"]) == 0
    written = tmp_path / "spleen_ct_cbo" / "configs" / "train.json"
    assert ConfigParser.load_config_file(written)["task"]["class_names"] == ["spleen"]


# ---- (b) one tiny epoch of training, then evaluation, through `python -m monai.bundle run`


def _run(args: list[str], data: Data, out: Path) -> None:
    options = ["--dataset_dir", str(data.dataset_dir), "--datalist", str(data.datalist), "--output_dir", str(out)]
    # one thread: on 2 shared cores, 2 OpenMP threads can spin against each other and a run takes minutes
    run_bundle(args, [*options, "--model#name", "tiny"], env={"OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize(
    "bundle", [*BUNDLES[:2], pytest.param(BUNDLES[2], marks=pytest.mark.slow), BUNDLES[3]]
)  # BraTS ~30 s
def test_bundle_trains_a_tiny_epoch_and_evaluates_in_the_input_geometry(bundle, data, tmp_path):
    configs, out = _configs(bundle), tmp_path / "out"
    _run(
        [
            "training",
            "--config_file",
            str(configs / "train.json"),
            "--max_epochs",
            "1",
            "--val_interval",
            "1",
            "--slices_per_volume",
            "2",
        ],
        data[bundle],
        out,
    )
    assert (out / "models" / "best_adapter.pt").is_file()
    state = torch.load(out / "models" / "training_state.pt", weights_only=True)
    assert state["trainer"]["epoch"] == 1

    merged = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    _run(["--config_file", merged], data[bundle], out)
    train = _parser(bundle, "train.json").get_parsed_content("task")
    with open(out / "eval" / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(train.class_names)  # one test case, a row per class / region
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    segs = sorted((out / "eval").glob("*_seg.nii.gz"))
    assert len(segs) == 1, segs
    if bundle == "brats_mri_cbo":  # named after the datalist's case, not the modality file every case shares
        assert segs[0].name == f"{BRATS_CASE}_seg.nii.gz" and rows[0]["case"] == BRATS_CASE
    image, seg = nib.load(data[bundle].image), nib.load(segs[0])
    assert seg.shape == image.shape[:3]
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
    written = BRATS_WRITTEN if bundle == "brats_mri_cbo" else list(train.classes)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, *written}
    # auto_share is on by default: the adapter holds class prompts and evaluate.json also scores automatically
    spec = read_adapter(out / "models" / "best_adapter.pt")["class_prompts"]
    assert spec["names"] == list(train.class_names) and spec["values"] == written
    with open(out / "eval" / "auto" / "metrics_per_case.csv", newline="") as f:
        auto_rows = list(csv.DictReader(f))
    assert [r["class"] for r in auto_rows] == list(train.class_names)
    auto_seg = nib.load(out / "eval" / "auto" / segs[0].name)
    assert auto_seg.shape == image.shape[:3] and np.allclose(auto_seg.affine, image.affine, atol=1e-4)


def test_configs_resolve_to_the_values_recorded_before_the_task_spec():
    """The bundles' training, evaluation and inference values (classes, label values, transform chains,
    preprocessing, automatic and propagation settings) are those recorded in ``resolved_configs.json``."""
    from tests.bundles.resolved import GOLDEN, resolve_all, without_added

    recorded = json.loads(GOLDEN.read_text(encoding="utf-8"))
    resolved = without_added(json.loads(json.dumps(resolve_all())))
    recorded = without_added(recorded)
    for bundle, kinds in recorded.items():
        for kind, values in kinds.items():
            for key, value in values.items():
                assert resolved[bundle][kind][key] == value, f"{bundle} {kind}.json: {key} changed"


@pytest.mark.parametrize("bundle", ["spleen_ct_cbo", "hippocampus_mri_cbo"])
def test_the_recipe_turns_interactive_training_on_in_a_bundles_trainer(bundle):
    """train.json's trainer takes its simulated interaction from the recipe: the recipe's by default (half the box
    steps), the same interaction as ``monai-cbo adapt``'s; ``--recipe#click_share 0`` box steps only."""
    from monai_cbo.training import Interaction

    def interaction(**override):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser.update(override)
        return parser.get_parsed_content("train#trainer#interaction")

    assert interaction() == Interaction(share=0.5, max_clicks=5, seed=0) == Recipe().interaction
    assert interaction(**{"recipe#click_share": 0.25, "seed": 3}) == Interaction(share=0.25, max_clicks=5, seed=3)
    assert interaction(**{"recipe#click_share": 0.0}) is None
