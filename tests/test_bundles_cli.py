"""Bundles by name: ``monai-cbo bundles`` and ``monai-cbo segment --bundle``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_cbo import bundles
from monai_cbo.cli import main
from monai_cbo.models import build_segmenter
from monai_cbo.peft import save_adapter


def test_bundles_lists_every_bundle_with_its_classes_and_adapter(capsys):
    assert main(["bundles"]) == 0
    out = capsys.readouterr().out
    for name in ("spleen_ct_cbo", "organ_ct_cbo", "brats_mri_cbo", "hippocampus_mri_cbo"):
        assert f"{name}:" in out
    assert "classes: anterior, posterior" in out and "classes: WT, TC, ET" in out
    assert "no real spleen CT with a manual label" in out  # the spleen bundle says why it ships no adapter


def test_unknown_bundle_lists_the_names(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "x.nii.gz"), "-o", str(tmp_path / "o"), "--bundle", "spleen"]) == 2
    assert "no bundle named 'spleen'; the bundles are brats_mri_cbo" in capsys.readouterr().err


def test_bundle_without_adapter_fails_before_reading_and_names_the_file(tmp_path, capsys):
    missing = tmp_path / "never_read.nii.gz"
    assert main(["segment", str(missing), "-o", str(tmp_path / "o"), "--bundle", "spleen_ct_cbo"]) == 2
    err = capsys.readouterr().err
    assert "bundles/spleen_ct_cbo/models/adapter.pt does not exist" in err and "--key-box" in err
    assert main(["segment", str(missing), "-o", str(tmp_path / "o"), "--bundle", "spleen_ct_cbo", "--modality", "mri"])
    assert "drop --modality" in capsys.readouterr().err


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the hippocampus bundle that ships a (tiny, untrained) automatic adapter."""
    root = tmp_path / "bundles"
    shutil.copytree(
        bundles.BUNDLES_DIR / "hippocampus_mri_cbo",
        root / "hippocampus_mri_cbo",
        ignore=shutil.ignore_patterns("models"),
    )
    model = build_segmenter("tiny", preset="lora_cbo", class_names=["anterior", "posterior"])
    (root / "hippocampus_mri_cbo" / "models").mkdir()
    save_adapter(model, root / "hippocampus_mri_cbo" / "models" / "adapter.pt")
    monkeypatch.setattr(bundles, "BUNDLES_DIR", root)
    return root / "hippocampus_mri_cbo"


def _image(path):
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image((rng.random((20, 24, 5)) * 300).astype(np.float32), np.diag([1, 1, 1.5, 1])), path)
    return path


def test_segment_by_bundle_name_runs_automatically_with_its_adapter_and_preprocessing(shipped, tmp_path, capsys):
    image = _image(tmp_path / "case.nii.gz")
    assert main(["segment", str(image), "-o", str(tmp_path / "out"), "--bundle", "hippocampus_mri_cbo"]) == 0
    written = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert written.shape == (20, 24, 5) and np.allclose(written.affine, np.diag([1, 1, 1.5, 1]))
    assert bundles.load_bundle("hippocampus_mri_cbo").task.preprocess.modality == "mri"
    assert main(["bundles"]) == 0
    assert f"adapter: {shipped / 'models' / 'adapter.pt'}" in capsys.readouterr().out


def test_corrupt_bundle_adapter_names_the_file(shipped, tmp_path, capsys):
    (shipped / "models" / "adapter.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    image = _image(tmp_path / "case.nii.gz")
    assert main(["segment", str(image), "-o", str(tmp_path / "out"), "--bundle", "hippocampus_mri_cbo"]) == 2
    err = capsys.readouterr().err
    assert "hippocampus_mri_cbo/models/adapter.pt" in err and "corrupt" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _plan(*flags: str):
    from monai_cbo.cli import build_parser
    from monai_cbo.cli.segment import plan

    return plan(build_parser().parse_args(["segment", "x.nii.gz", "-o", "o", *flags]))


def test_bundle_sets_the_automatic_defaults_it_was_measured_with(shipped, tmp_path):
    real = Path(bundles.__file__).parents[1] / "bundles"
    spleen = bundles.read_task(real / "spleen_ct_cbo" / "configs" / "inference.json")
    # multi-part organs elsewhere; smoothing swept on the hippocampus only
    assert spleen.auto.largest_component is False and spleen.auto.z_smooth == 0.0
    for flags, largest, smooth in (
        ([], True, 0.5),
        (["--no-largest-component"], False, 0.5),
        (["--z-smooth", "0"], True, 0.0),
    ):
        auto = _plan("--bundle", "hippocampus_mri_cbo", *flags).auto
        assert auto.largest_component is largest and auto.z_smooth == smooth


def test_a_bundle_propagates_with_the_settings_swept_for_its_adapter(shipped, tmp_path, monkeypatch):
    """The hippocampus bundle records the propagation settings swept with its shipped adapter in its task: its
    inference config, segment --bundle and the library read the same values; other bundles keep the library
    defaults; a wrong name in the config is an error naming the file."""
    import json

    from monai.bundle import ConfigParser

    from monai_cbo.inferers import PropagationConfig

    info = bundles.load_bundle("hippocampus_mri_cbo")
    swept = info.task.propagation
    assert swept != PropagationConfig() and swept.min_class_overlap > 0  # the shipped adapter's own sweep:
    published = (
        Path(bundles.__file__).parents[1] / "docs" / "benchmarks" / "propagation" / "adapter_staged_summary.json"
    )
    assert swept == PropagationConfig(**json.loads(published.read_text(encoding="utf-8"))["config"])  # as published
    # every swept setting is written out, so that a later change of the library defaults leaves it alone
    from monai_cbo.bench.prompting import STOP_GRID, TRAJECTORY_GRID

    config = json.loads((shipped / "configs" / "inference.json").read_text(encoding="utf-8"))
    written = config["task"]["propagation"]
    swept_names = {*TRAJECTORY_GRID, "mask_prompt", "neighbour_weight", *STOP_GRID, *(f"range_{k}" for k in STOP_GRID)}
    assert swept_names <= set(written), sorted(swept_names - set(written))
    parser = ConfigParser()
    parser.read_config(shipped / "configs" / "inference.json")
    assert parser.get_parsed_content("task").propagation == swept  # what the bundle's own inference uses
    assert _plan("--bundle", "hippocampus_mri_cbo").task.propagation == swept
    real = Path(bundles.__file__).parents[1] / "bundles"
    spleen = bundles.read_task(real / "spleen_ct_cbo" / "configs" / "inference.json")
    assert spleen.propagation == PropagationConfig()
    config["task"]["propagation"]["min_ioou"] = 0.5
    (shipped / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="hippocampus_mri_cbo/configs/inference.json.*min_ioou"):
        bundles.load_bundle("hippocampus_mri_cbo")


def test_a_bundle_task_value_written_as_an_expression_is_read(shipped):
    """The task is parsed as MONAI parses the config: a value written as an expression or a reference counts
    (raw JSON reading took such a value for the library default)."""
    import json

    path = shipped / "configs" / "inference.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["smoothing"] = 0.25
    config["task"]["auto"]["z_smooth"] = "@smoothing"
    config["task"]["propagation"]["min_overlap"] = "$0.5 + 0.1"
    path.write_text(json.dumps(config), encoding="utf-8")
    task = bundles.load_bundle("hippocampus_mri_cbo").task
    assert task.auto.z_smooth == 0.25 and task.propagation.min_overlap == pytest.approx(0.6)
    assert _plan("--bundle", "hippocampus_mri_cbo").auto.z_smooth == 0.25
