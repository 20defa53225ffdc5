"""Tests of data_prep/msd.py on the shared Task04_Hippocampus folder and small synthetic MSD folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.apps import DecathlonDataset
from monai.data import load_decathlon_datalist

from data_prep import msd
from data_prep.common import LayoutError

SPLIT = ["--val-fraction", "0.2", "--test-fraction", "0.2"]
NAMES = ["--labels", "0:background,1:anterior,2:posterior"]


def _run(dataset, out, *extra: str) -> dict:
    assert msd.main([str(dataset), "-o", str(out), *SPLIT, *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_hippocampus_gives_208_cases_with_named_labels(hippocampus, tmp_path):
    datalist = _run(hippocampus, tmp_path / "d.json", "--seed", "0", "--channels", "MRI", *NAMES)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [124, 42, 42]
    assert datalist["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert datalist["channels"] == ["MRI"] and datalist["dataset_dir"] == str(
        hippocampus.resolve()
    )  # data_prep records the real path
    items = load_decathlon_datalist(tmp_path / "d.json", data_list_key="test", base_dir=datalist["dataset_dir"])
    assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in items)


def test_split_is_reproducible_by_seed(hippocampus, tmp_path):
    first = _run(hippocampus, tmp_path / "a.json", "--seed", "7", *NAMES)
    _run(hippocampus, tmp_path / "b.json", "--seed", "7", *NAMES)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    other = _run(hippocampus, tmp_path / "c.json", "--seed", "8", *NAMES)
    assert other["validation"] != first["validation"]
    parts = [{c["image"] for c in first[k]} for k in ("training", "validation", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 208


def test_labels_from_label_values_without_dataset_json(hippocampus, tmp_path, capsys):
    datalist = _run(hippocampus, tmp_path / "d.json")
    assert datalist["labels"] == {"0": "background", "1": "label_1", "2": "label_2"}
    assert "pass --labels" in capsys.readouterr().err


def test_dataset_json_names_and_macos_files_skipped(tmp_path, write_nifti):
    for i in range(3):
        write_nifti(tmp_path / "Task09_Spleen" / "imagesTr" / f"spleen_{i}.nii.gz")
        write_nifti(tmp_path / "Task09_Spleen" / "labelsTr" / f"spleen_{i}.nii.gz")
    (tmp_path / "Task09_Spleen" / "imagesTr" / "._spleen_0.nii.gz").write_bytes(b"\0")
    meta = {"name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}}
    (tmp_path / "Task09_Spleen" / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    datalist = _run(tmp_path / "Task09_Spleen", tmp_path / "d.json", "--test-fraction", "0")
    assert datalist["name"] == "Spleen" and datalist["channels"] == ["CT"]
    assert datalist["labels"] == {"0": "background", "1": "spleen"}
    assert sorted(c["image"] for k in ("training", "validation") for c in datalist[k]) == [
        f"imagesTr/spleen_{i}.nii.gz" for i in range(3)
    ]


def test_missing_label_names_the_image(tmp_path, write_nifti):
    write_nifti(tmp_path / "imagesTr" / "a.nii.gz")
    write_nifti(tmp_path / "imagesTr" / "b.nii.gz")
    write_nifti(tmp_path / "labelsTr" / "a.nii.gz")
    with pytest.raises(LayoutError, match=r"imagesTr/b\.nii\.gz has no label labelsTr/b\.nii\.gz"):
        msd.main([str(tmp_path), "-o", str(tmp_path / "d.json")])


def test_existing_output_is_kept_without_overwrite(hippocampus, tmp_path):
    out = tmp_path / "d.json"
    out.write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        msd.main([str(hippocampus), "-o", str(out), *NAMES])
    assert out.read_text(encoding="utf-8") == "{}"
    assert len(_run(hippocampus, out, "--overwrite", *NAMES)["training"]) == 124


def test_download_fetches_the_official_tarball_then_converts(tmp_path, monkeypatch, write_nifti):
    calls = []

    def fake_download_and_extract(url, filepath, output_dir, hash_val, hash_type):  # no internet in tests
        calls.append((url, Path(filepath).name, hash_val, hash_type))
        write_nifti(Path(output_dir) / "Task09_Spleen" / "imagesTr" / "spleen_2.nii.gz")
        write_nifti(Path(output_dir) / "Task09_Spleen" / "labelsTr" / "spleen_2.nii.gz", value=1)

    monkeypatch.setattr("monai.apps.download_and_extract", fake_download_and_extract)
    datalist = _run(tmp_path / "msd", tmp_path / "d.json", "--download", "Task09_Spleen", "--test-fraction", "0")
    assert calls == [
        (DecathlonDataset.resource["Task09_Spleen"], "Task09_Spleen.tar", DecathlonDataset.md5["Task09_Spleen"], "md5")
    ]
    assert datalist["dataset_dir"] == str(tmp_path / "msd" / "Task09_Spleen") and len(datalist["training"]) == 1
