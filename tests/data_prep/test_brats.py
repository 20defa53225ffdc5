"""Tests of data_prep/brats.py: the shared BRATS 2015 folder and synthetic 2021 / 2023 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import brats
from data_prep.common import LayoutError

CASES = {"2021": ["BraTS2021_00000", "BraTS2021_00002"], "2023": ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]}


def _layout(root: Path, layout: str, drop: str | None = None) -> Path:
    """Empty files in a BraTS ``layout`` (detection and listing never read them), without the file ``drop``."""
    for case in CASES[layout]:
        sep = "_" if layout == "2021" else "-"
        for token in (*brats.LAYOUTS[layout].modalities, "seg"):
            path = root / case / f"{case}{sep}{token}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name != drop:
                path.touch()
    return root


def _run(dataset, out, *extra: str) -> dict:
    assert brats.main([str(dataset), "-o", str(out), "--val-fraction", "0", "--test-fraction", "0", *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_2015_folder_gives_four_cases_flair_then_t1c(brats2015, tmp_path):
    datalist = _run(brats2015, tmp_path / "d.json")
    cases = datalist["training"]
    assert len(cases) == 4 and datalist["label_convention"] == "2015" and datalist["channels"] == ["Flair", "T1c"]
    assert all(
        [Path(f).name for f in c["image"]] == ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
        for c in cases
    )
    assert all(
        (brats2015 / c["label"]).name == "OTMultiClass.nii.gz" and (brats2015 / c["label"]).is_file() for c in cases
    )
    assert datalist["labels"]["4"] == "enhancing" and datalist["regions"]["tumour_core"] == [1, 3, 4]


def test_modalities_choose_channels_and_order(brats2015, tmp_path):
    datalist = _run(brats2015, tmp_path / "d.json", "--modalities", "T1c,Flair")
    assert datalist["channels"] == ["T1c", "Flair"]
    assert Path(datalist["training"][0]["image"][0]).name == "T1c_subtrMeanDivStd.nii.gz"
    with pytest.raises(ValueError, match="unknown 2015 modality 'T1C'; did you mean"):
        _run(brats2015, tmp_path / "e.json", "--modalities", "Flair,T1C")


@pytest.mark.parametrize(("layout", "enhancing"), [("2021", "4"), ("2023", "3")])
def test_2021_and_2023_layouts_are_detected(layout, enhancing, tmp_path):
    datalist = _run(_layout(tmp_path / "data", layout), tmp_path / "d.json")
    assert datalist["label_convention"] == layout and len(datalist["training"]) == 2
    assert datalist["channels"] == list(brats.LAYOUTS[layout].default) and len(datalist["channels"]) == 4
    assert datalist["labels"][enhancing] == "enhancing" and datalist["regions"]["enhancing"] == [int(enhancing)]
    case = CASES[layout][0]
    assert datalist["training"][0]["image"][0] == f"{case}/{case}{'_flair' if layout == '2021' else '-t2f'}.nii.gz"


def test_wrong_layout_lists_expected_and_found(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "hippocampus_001.nii.gz").touch()
    with pytest.raises(LayoutError) as error:
        _run(tmp_path, tmp_path / "d.json")
    message = str(error.value)
    assert "expected: 2015: <case>/{Flair,T1c,T1,T2}_subtrMeanDivStd.nii.gz" in message
    assert "<case>/<case>-seg.nii.gz" in message and "imagesTr/" in message and "hippocampus_001.nii.gz" in message
    with pytest.raises(LayoutError, match="matches the BraTS layout 2023"):
        _run(_layout(tmp_path / "data", "2021"), tmp_path / "d.json", "--layout", "2023")


def test_mixed_layouts_are_ambiguous(tmp_path):
    _layout(tmp_path, "2021")
    _layout(tmp_path, "2023")
    with pytest.raises(LayoutError, match="ambiguous BraTS layout .* 2021 and 2023; pass --layout"):
        _run(tmp_path, tmp_path / "d.json")


def test_missing_modality_names_case_and_file(tmp_path, capsys):
    data = _layout(tmp_path / "data", "2021", drop="BraTS2021_00002_t1ce.nii.gz")
    with pytest.raises(LayoutError, match="case BraTS2021_00002 is missing BraTS2021_00002_t1ce.nii.gz"):
        _run(data, tmp_path / "d.json")
    datalist = _run(data, tmp_path / "d.json", "--skip-incomplete")
    assert [c["label"] for c in datalist["training"]] == ["BraTS2021_00000/BraTS2021_00000_seg.nii.gz"]
    assert "skipped 1 incomplete case(s): BraTS2021_00002 (no BraTS2021_00002_t1ce.nii.gz)" in capsys.readouterr().err
    assert _run(data, tmp_path / "e.json", "--modalities", "flair,t2")["channels"] == ["flair", "t2"]  # t1ce not needed


def test_existing_output_is_kept_without_overwrite(brats2015, tmp_path):
    (tmp_path / "d.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(brats2015, tmp_path / "d.json")
    assert len(_run(brats2015, tmp_path / "d.json", "--overwrite")["training"]) == 4
