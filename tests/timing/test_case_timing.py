"""``monai-cbo segment --timings``, ``monai-cbo speed --case`` and what a segment process imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_cbo.bench.protocols import PROTOCOLS, protocol_prompt
from monai_cbo.cli import main
from monai_cbo.inferers.prompts import prompts_from_spec, spec_from_entries
from monai_cbo.inferers.volume import SliceGeometry
from monai_cbo.timing.case_timing import protocol_entries, timings_table

REPO = Path(__file__).resolve().parents[2]


def _case(folder: Path, affine=None) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(24, 20, 8)).astype(np.float32)
    label = np.zeros((24, 20, 8), dtype=np.uint8)
    label[5:15, 4:12, 1:6] = 2
    label[16:20, 14:18, 2:4] = 3
    affine = np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine
    paths = folder / "img.nii.gz", folder / "lab.nii.gz"
    for path, array in zip(paths, (image, label), strict=True):
        nib.save(nib.Nifti1Image(array, affine), path)
    return paths


def test_segment_timings_hold_every_stage_and_refuse_an_existing_file(tmp_path, capsys):
    image, _ = _case(tmp_path)
    timings = tmp_path / "t" / "timings.json"
    args = ["segment", str(image), "-o", str(tmp_path / "o"), "--model", "tiny", "--timings", str(timings)]
    assert main([*args, "--key-box", "5,4,1,14,11,5"]) == 0
    figures = json.loads(timings.read_text(encoding="utf-8"))
    stages = figures["stages"]
    for name in ("startup", "build", "read", "preprocess", "encoder", "decoder.box", "postprocess", "write"):
        assert stages[name]["seconds"] >= 0 and stages[name]["calls"] >= 1, name
    assert stages["startup"]["calls"] == 1 and stages["encoder"]["calls"] == figures["counters"]["slices_encoded"]
    assert 1 <= figures["counters"]["slices_encoded"] <= 5 and figures["counters"]["slices_in_volume"] == 8
    total = sum(s["seconds"] for s in stages.values()) + figures["other_s"]
    assert total == pytest.approx(figures["total_s"], abs=1e-2)
    assert figures["mask_written_s"] <= figures["total_s"]
    assert figures["process_start"]["method"] and figures["exit_code"] == 0
    assert figures["encoder_s_per_slice"] > 0 and figures["machine"]["cpu_cores"] >= 1
    before = timings.read_bytes()
    assert main([*args, "--key-box", "5,4,3,14,11,3"]) == 2  # checked before any work: nothing is replaced
    assert "timings.json already exists; pass --overwrite" in capsys.readouterr().err
    assert timings.read_bytes() == before
    assert main([*args, "--key-box", "5,4,3,14,11,3", "--overwrite"]) == 0
    assert json.loads(timings.read_text(encoding="utf-8"))["stages"]["decoder.box"]["calls"] >= 1
    assert not [p for p in timings.parent.iterdir() if p.name != "timings.json"]  # no temporary file left


@pytest.mark.parametrize("protocol", [p for p in PROTOCOLS if p != "per_slice"])
def test_each_protocols_prompt_file_gives_segment_the_benchs_own_prompt(protocol):
    """Written in stored voxels of a flipped and permuted volume, read back the way segment reads it."""
    affine = np.array([[0, -3.0, 0, 10], [-1.5, 0, 0, 5], [0, 0, 2.0, -4], [0, 0, 0, 1]])
    label = np.zeros((24, 20, 8), dtype=bool)
    label[5:15, 4:12, 1:6] = True
    label[7:13, 4:9, 5] = False  # slices of different shapes
    geometry = SliceGeometry.from_affine(affine, label.shape)
    mask = np.ascontiguousarray(geometry.to_sliced(label))
    entries = protocol_entries(mask, geometry, protocol, 7)
    read = prompts_from_spec(spec_from_entries(entries, "voxel", affine, geometry, "test")).objects[7]
    expected = protocol_prompt(mask, protocol)
    assert read.z_range == expected.z_range
    assert [k.slice for k in read.keys] == [k.slice for k in expected.keys]
    for got, want in zip(read.keys, expected.keys, strict=True):
        np.testing.assert_array_equal(got.box, want.box)
    assert protocol_entries(mask, geometry, "per_slice", 7) is None  # given to segment as --label


def test_speed_case_times_one_segment_process_per_protocol(tmp_path, capsys):
    image, label = _case(tmp_path)
    args = ["speed", "--case", str(image), str(label), "--classes", "2", "--model", "tiny", "--skip-encoder"]
    keep = ["--case-output", str(tmp_path / "keep"), "--case-precision", "fp32"]
    assert main([*args, "--protocol", "box3d", *keep]) == 0
    result = json.loads(capsys.readouterr().out)
    figures = result["protocols"]["box3d"]
    assert figures["command"][-2:] == ["--precision", "fp32"]  # handed on to the segment run it times
    assert result["target"] == {"classes": [2], "slices": 5, "volume_slices": 8}
    assert figures["counters"]["slices_in_volume"] == 8 and 1 <= figures["counters"]["slices_encoded"] <= 5
    assert figures["total_s"] >= figures["stages"]["startup"]["seconds"] > 0
    assert figures["wall_s"] > 0 and 0 <= figures["dice"] <= 1
    assert figures["ratio_total_to_encoded"] == figures["ratio_total_to_run_encoder"] > 1
    assert figures["box_target"]["slices_in_box"] == 5
    assert (tmp_path / "keep" / "box3d" / "prompts.json").is_file()
    assert "| box3d |" in timings_table(result)
    assert main([*args[:4], "--model", "tiny", "--protocol", "box3d"]) == 2  # a label of two values needs --classes
    assert "choose the target with --classes" in capsys.readouterr().err


_IMPORTS = """
import sys
from monai_cbo.cli import main
code = main(sys.argv[1:])
print("MODULES", sorted(m for m in sys.modules if sys.modules[m] is not None))
sys.exit(code)
"""


def test_segment_imports_neither_the_label_server_nor_the_bench_nor_simpleitk(tmp_path):
    image, _ = _case(tmp_path)
    args = ["segment", str(image), "-o", str(tmp_path / "o"), "--model", "tiny", "--key-box", "5,4,1,14,11,5"]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES"))
    loaded = set(eval(line[len("MODULES") :]))  # noqa: S307  our own subprocess's printed list
    assert "monai_cbo.inferers.propagation" in loaded  # it did run
    for unwanted in ("monai_cbo.label", "monai_cbo.bench", "SimpleITK"):
        assert not [m for m in loaded if m == unwanted or m.startswith(unwanted + ".")], unwanted
    # ITK comes only with the optional [label] extra; MONAI then imports it itself at `import monai` (its eager
    # optional imports in monai.data), never a monai_cbo module
    assert "itk" not in loaded or "monai.data.image_reader" in loaded
