"""Every place a file enters, fed a bad file: one row per bad input and entry point, with what it must give.

A row expects one of:

* an exception of exactly the listed built-in type (not a nibabel / torch / zlib error, not a RuntimeError)
  whose message names the file (``names``) and says what is wrong and what to do (``says``, a regex), with
  nothing written;
* an exit code of ``monai-cbo segment``, with the same checks on what it printed (a folder run
  continues past a bad case and exits 1; an error before any case runs exits 2);
* ``SAFE``: a documented safe result, checked by the row's ``check`` (``says`` then matches a warning).

Every row runs under a time limit, so a hang fails instead of blocking the suite. Volumes are small synthetic
NIfTI files; the models are the random ``tiny`` (128 px SAM ViT) and ``tiny_tinyvit``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_cbo.cli import main
from monai_cbo.data import load_datalist
from monai_cbo.inferers import Case, KeyPrompt, Preprocess, SliceWiseInferer, load_volume, prepare_volume, segment_case
from monai_cbo.inferers.prompts import read_prompt_file
from monai_cbo.inferers.volume import SliceGeometry
from monai_cbo.models import load_segmenter
from monai_cbo.networks import build_model
from monai_cbo.networks.builders import load_checkpoint_file
from monai_cbo.peft import PeftConfig, apply_peft, load_adapter, read_adapter, save_adapter
from monai_cbo.transforms import LabelToBinaryTargets

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
SHAPE = (24, 20, 6)
KEY = "5,4,2,14,11,2"  # a --key-box on slice 2
SAFE = None  # a row's expectation: a documented safe result
ROW_SECONDS = 60  # far above any row's time on 2 busy CPU cores: beyond it, a row hangs


class Files:
    """Writes a row's (bad) input files into its tmp_path and runs the entry points on them."""

    def __init__(self, tmp: Path, inferer: SliceWiseInferer, trained: SimpleNamespace) -> None:
        self.tmp, self.inferer = tmp, inferer
        self.adapter, self.weights = trained.adapter, trained.weights  # tiny + lora_cbo adapter; tiny base weights
        self.out = tmp / "out"
        self.rng = np.random.default_rng(0)

    def nifti(self, name: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, affine), path)
        return path

    def image(self, name: str = "img.nii.gz", shape: tuple[int, ...] = SHAPE) -> Path:
        return self.nifti(name, self.rng.normal(size=shape).astype(np.float32))

    def label(self, name: str = "lab.nii.gz", shape: tuple[int, ...] = SHAPE, affine: np.ndarray = AFFINE) -> Path:
        label = np.zeros(shape, dtype=np.uint8)
        label[5:15, 4:12, 1:5] = 1
        label[16:20, 14:18, 2:4] = 2
        return self.nifti(name, label, affine)

    def write(self, name: str, data: bytes | str | dict) -> Path:
        path = self.tmp / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
        return path

    def segment(self, pre: Preprocess | None = None, **case):
        return segment_case(self.inferer, Case(**case), self.out / "case_seg.nii.gz", pre)

    def cli(self, *args: str | Path) -> int:
        return main(["segment", *map(str, args), "-o", str(self.out), "--model", "tiny"])

    @staticmethod
    def peft(model: str, preset: str = "lora_cbo", **config) -> torch.nn.Module:
        return apply_peft(build_model(model), PeftConfig.from_preset(preset, **config))


@dataclass(frozen=True)
class Row:
    case: str  # the bad input, as the reliability issue lists it
    entry: str  # the entry point fed it
    call: Callable[[Files], object]
    expect: type[Exception] | int | None  # exception type, CLI exit code, or SAFE
    names: str = ""  # the file the message (or warning) must name
    says: str = ""  # regex: what is wrong and what to do
    check: Callable[[Files, object], None] | None = None  # for SAFE rows (and extra checks)


# ---- rows that need more than one line ---------------------------------------------------------------------------


def _truncated(f: Files) -> object:
    good = f.image("good.nii.gz").read_bytes()
    return load_volume(f.write("cut.nii.gz", good[: len(good) // 2]))  # cut inside the compressed voxel data


def _nrrd_without_simpleitk(f: Files) -> object:
    path = f.write("brain.nrrd", b"NRRD0004\ntype: float\n\n")
    with mock.patch.dict(sys.modules, {"SimpleITK": None}):  # `import SimpleITK` raises ImportError
        return load_volume(path)


def _folder_run(f: Files) -> int:
    f.image("cases/good.nii.gz")
    f.label("labels/good.nii.gz")
    f.write("cases/corrupt.nii.gz", gzip.compress(b"not a nifti file" * 40))
    f.nifti("cases/flat.nii.gz", np.zeros((24, 20), dtype=np.float32))
    return main(
        ["segment", str(f.tmp / "cases"), "-o", str(f.out), "--label", str(f.tmp / "labels"), "--model", "tiny"]
    )


def _two_channels(f: Files) -> Path:
    return f.nifti("two_channels.nii.gz", f.rng.normal(size=(*SHAPE, 2)).astype(np.float32))


def _nan_inf(f: Files):
    array = f.rng.normal(size=SHAPE).astype(np.float32)
    array[0, 0, 0], array[1, 1, 1], array[2, 2, 2] = np.nan, np.inf, -np.inf
    path = f.nifti("nan_inf.nii.gz", array)
    return f.segment(image=path, label=f.label()), prepare_volume(load_volume(path), Preprocess())[0]


def _constant(value: float, dtype) -> Callable[[Files], object]:
    def call(f: Files):
        path = f.nifti("constant.nii.gz", np.full(SHAPE, value, dtype=dtype))
        return f.segment(image=path, label=f.label()), prepare_volume(load_volume(path), Preprocess())[0]

    return call


def _one_hot(f: Files):
    label = np.asarray(nib.load(f.label()).dataobj)
    return f.segment(
        image=f.image(), label=f.nifti("onehot.nii.gz", np.stack([label == 1, label == 2], -1).astype(np.uint8))
    )


def _brats_entry(f: Files) -> Path:
    for name in ("flair", "t1c"):
        f.image(f"pat1/{name}.nii.gz")
    f.label("pat1/seg.nii.gz")
    entry = {"image": ["pat1/flair.nii.gz", "pat1/t1c.nii.gz", "pat1/t2.nii.gz"], "label": "pat1/seg.nii.gz"}
    return f.write("datalist.json", {"training": [entry]})


def _outside_box(f: Files) -> Path:
    return f.write("boxes.json", {"prompts": [{"label": 1, "box3d": [30, 30, 10, 40, 40, 12]}]})


def _read_outside_box(f: Files):
    image = load_volume(f.image())
    affine = image.affine.numpy()
    return read_prompt_file(_outside_box(f), affine, SliceGeometry.from_affine(affine, image.shape[1:]))


def _zero_affine(f: Files) -> Path:
    """A NIfTI whose sform is all zeros (a broken header nibabel itself will not write)."""
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.float32)
    header["srow_x"] = header["srow_y"] = header["srow_z"] = 0
    header["sform_code"], header["qform_code"] = 1, 0
    data = f.rng.normal(size=SHAPE).astype(np.float32).tobytes(order="F")
    return f.write("zero.nii", header.binaryblock + b"\0" * 4 + data)


def _prompt_cli(payload: dict | str) -> Callable[[Files], int]:
    """``monai-cbo segment --prompts`` with a prompt file holding ``payload`` (a dict, or raw JSON text)."""

    def call(f: Files) -> int:
        return f.cli(f.image(), "--prompts", f.write("prompts.json", payload))

    return call


# ---- checks of safe results -------------------------------------------------------------------------------------


def _mask(result) -> np.ndarray:
    written = nib.load(result.output)
    assert written.shape == SHAPE and np.allclose(written.affine, AFFINE)
    return np.asarray(written.dataobj)


def _finite_and_written(f: Files, result) -> None:
    case, volume = result
    assert torch.isfinite(volume).all() and 0 <= float(volume.min()) <= float(volume.max()) <= 1
    assert set(np.unique(_mask(case)).tolist()) <= {0, 1, 2}
    assert [m["class"] for m in case.metrics] == ["1", "2"] and all(np.isfinite(m["dice"]) for m in case.metrics)


def _constant_is_zeros(f: Files, result) -> None:
    _finite_and_written(f, result)
    assert float(result[1].abs().max()) == 0.0  # empty MRI percentile window / below the CT window: zeros


def _only_class_1(f: Files, result) -> None:
    assert set(np.unique(_mask(result)).tolist()) <= {0, 1}
    assert [m["class"] for m in result.metrics] == ["1"]  # neither the ignored 2 nor the absent 5 is scored


def _clipped_box(f: Files, result) -> None:
    assert set(np.unique(_mask(result)).tolist()) <= {0, 1} and result.slices == 2  # slices 4 and 5: the inside


def _folder_continued(f: Files, code) -> None:
    assert sorted(p.name for p in f.out.iterdir()) == ["good_seg.nii.gz", "metrics.csv"]


# The table: one row per bad input and entry point, kept compact (not reformatted) so that it reads as one.
# fmt: off
ROWS = [
    # missing file
    Row("missing file", "load_volume", lambda f: load_volume(f.tmp / "missing.nii.gz"),
        FileNotFoundError, "missing.nii.gz", r"does not exist; check the path"),
    Row("missing file", "cli segment", lambda f: f.cli(f.tmp / "missing.nii.gz", "--key-box", KEY),
        2, "missing.nii.gz", r"monai-cbo segment: error: .* does not exist; check the path"),
    Row("missing file", "segment_case prompt file",
        lambda f: f.segment(image=f.image(), prompt_file=f.tmp / "missing.json"),
        FileNotFoundError, "missing.json", r"prompt file .* does not exist; check the path or write one"),
    # empty file (0 bytes)
    Row("empty file", "load_volume", lambda f: load_volume(f.write("empty.nii.gz", b"")),
        ValueError, "empty.nii.gz", r"is empty \(0 bytes\); re-export or re-copy the image"),
    Row("empty file", "segment_case prompt file",
        lambda f: f.segment(image=f.image(), prompt_file=f.write("e.json", "")),
        ValueError, "e.json", r"prompt file .* is empty \(0 bytes\); fix or rewrite it \(see monai_cbo\.inferers\."),
    Row("empty file", "load_datalist", lambda f: load_datalist(f.write("datalist.json", "")),
        ValueError, "datalist.json", r"is empty \(0 bytes\); fix it or write it again with a data_prep/ script"),
    Row("empty file", "build_model checkpoint", lambda f: build_model("tiny", checkpoint=f.write("empty.pth", b"")),
        ValueError, "empty.pth", r"checkpoint .* is empty \(0 bytes\); pass a SAM \.pth state dict"),
    Row("empty file", "load_segmenter", lambda f: load_segmenter(f.write("empty.pt", b"")),
        ValueError, "empty.pt", r"adapter checkpoint .* is empty \(0 bytes\); pass a checkpoint written by training"),
    # truncated / corrupt .nii.gz
    Row("truncated .nii.gz", "load_volume", _truncated,
        ValueError, "cut.nii.gz", r"cannot read .*: EOFError: .*; the file is corrupt or truncated: re-export or "
        r"re-copy it"),
    Row("corrupt .nii.gz", "load_volume", lambda f: load_volume(f.write("bad.nii.gz", gzip.compress(b"x" * 500))),
        ValueError, "bad.nii.gz", r"cannot read .*; the file is corrupt or truncated: re-export or re-copy it"),
    Row("corrupt .nrrd", "load_volume", lambda f: load_volume(f.write("bad.nrrd", b"NRRD0004\ntype: float\n\n")),
        ValueError, "bad.nrrd", r"cannot read .*; the file is corrupt or truncated: re-export or re-copy it"),
    Row(".nrrd without SimpleITK installed", "load_volume", _nrrd_without_simpleitk,
        ValueError, "brain.nrrd", r"needs SimpleITK, which is not installed; install it \(pip install SimpleITK\) or "
        r"convert the image to NIfTI"),
    Row("corrupt .nii.gz and a 2D image in a folder", "cli segment (folder run)", _folder_run,
        1, "corrupt.nii.gz", r"(?s)1 of 3 case\(s\) segmented.*FAILED corrupt: ValueError: cannot read .*re-copy it"
        r".*FAILED flat: ValueError: .*flat\.nii\.gz has 2 spatial dimensions", _folder_continued),
    # 2D image
    Row("2D image", "load_volume", lambda f: load_volume(f.nifti("flat.nii.gz", np.zeros((24, 20), np.float32))),
        ValueError, "flat.nii.gz", r"has 2 spatial dimensions \(shape \(24, 20\)\); a 3D volume is needed: give a 3D"),
    # 4D image with the wrong number of channels
    Row("4D image, --channels 0,1,3 on 2 channels", "segment_case",
        lambda f: f.segment(Preprocess(channels=[0, 1, 3]), image=_two_channels(f), key=KeyPrompt([5, 4, 2, 9, 9, 2])),
        ValueError, "two_channels.nii.gz", r"channels \[0, 1, 3\] out of range: the image has 2 channel\(s\), "
        r"indices 0\.\.1; choose up to three of them \(--channels"),
    Row("4D image, --channels 0,1,3 on 2 channels", "cli segment",
        lambda f: f.cli(_two_channels(f), "--key-box", KEY, "--channels", "0,1,3"),
        1, "two_channels.nii.gz", r"FAILED two_channels: ValueError: image .*: channels \[0, 1, 3\] out of range.*"
        r"choose up to three of them"),
    Row("4D image, 2 channels and none chosen", "prepare_volume",
        lambda f: prepare_volume(load_volume(_two_channels(f)), Preprocess()),
        ValueError, "two_channels.nii.gz", r"image has 2 channels; pass channels=\[\.\.\.\] .*\(--channels"),
    # NaN / Inf intensities: mapped to the ends of the intensity range, with a warning
    Row("NaN / Inf intensities", "segment_case + prepare_volume", _nan_inf, SAFE, "nan_inf.nii.gz",
        r"has 3 NaN / Inf voxel\(s\): NaN and -Inf are treated as the lowest intensity and \+Inf as the highest; "
        r"replace them", _finite_and_written),
    # constant image: zeros, no division by zero
    Row("constant image (MRI-like)", "segment_case + prepare_volume", _constant(7.0, np.float32), SAFE,
        check=_constant_is_zeros),
    Row("constant image (CT air)", "segment_case + prepare_volume", _constant(-1024, np.int16), SAFE,
        check=_constant_is_zeros),
    # label with values outside the configured classes
    Row("label values outside the classes", "segment_case classes=[1]",
        lambda f: f.segment(image=f.image(), label=f.label(), classes=[1]), SAFE, check=_only_class_1),
    Row("class absent from the label", "segment_case classes=[1, 5]",
        lambda f: f.segment(image=f.image(), label=f.label(), classes=[1, 5]), SAFE, check=_only_class_1),
    Row("label values outside the classes", "LabelToBinaryTargets (training)",
        lambda f: LabelToBinaryTargets(classes=[1])(load_volume(f.label())),
        ValueError, "lab.nii.gz", r"label values \[2\] of .* are outside the configured classes \[1\]; fix the "
        r"classes"),
    Row("image given as the label (negative values)", "segment_case",
        lambda f: f.segment(image=f.image(), label=f.image("img_as_label.nii.gz")),
        ValueError, "img_as_label.nii.gz", r"holds negative values .*; is it an image\? Give a label map, or choose "
        r"the classes to segment with --classes"),
    Row("one-hot label (2 channels)", "segment_case", _one_hot,
        ValueError, "onehot.nii.gz", r"has 2 channels \(one-hot or several maps\?\); give one label map"),
    # image / label shape and affine mismatch
    Row("image/label shape mismatch", "segment_case",
        lambda f: f.segment(image=f.image(), label=f.label("small.nii.gz", shape=(24, 20, 5))),
        ValueError, "small.nii.gz", r"has shape \(24, 20, 5\) but image .*img\.nii\.gz has \(24, 20, 6\); .*resample "
        r"the label onto the image"),
    Row("image/label affine mismatch", "segment_case",
        lambda f: f.segment(image=f.image(), label=f.label("shifted.nii.gz", affine=np.diag([2.0, 1.5, 3.0, 1.0]))),
        ValueError, "shifted.nii.gz", r"and image .*img\.nii\.gz have different affines .*; resample the label onto "
        r"the image grid"),
    # a missing BraTS modality
    Row("missing BraTS modality", "load_datalist", lambda f: load_datalist(_brats_entry(f)),
        FileNotFoundError, "t2.nii.gz", r"datalist .*datalist\.json, training entry 0: image .* does not exist; check "
        r"dataset_dir .* or re-run the data_prep script"),
    Row("missing BraTS modality", "segment_case",
        lambda f: f.segment(image=[f.image("flair.nii.gz"), f.tmp / "t2.nii.gz"], label=f.label()),
        FileNotFoundError, "t2.nii.gz", r"does not exist; check the path"),
    Row("BraTS modalities of different shapes", "load_volume",
        lambda f: load_volume([f.image("flair.nii.gz"), f.image("t2.nii.gz", shape=(24, 20, 5))]),
        ValueError, "t2.nii.gz", r"different shapes: .*flair\.nii\.gz \(24, 20, 6\), .* \(24, 20, 5\); .*resample "
        r"\(register\) them onto one image"),
    # an empty datalist
    Row("empty datalist", "load_datalist", lambda f: load_datalist(f.write("datalist.json", {"training": []})),
        ValueError, "datalist.json", r"the 'training' list is empty; add cases or re-run the data_prep script"),
    # a missing checkpoint
    Row("missing checkpoint", "build_model", lambda f: build_model("tiny", checkpoint=f.tmp / "none.pth"),
        FileNotFoundError, "none.pth", r"checkpoint .* does not exist; pass a SAM \.pth state dict"),
    Row("missing checkpoint", "load_segmenter", lambda f: load_segmenter(f.tmp / "none.pt"),
        FileNotFoundError, "none.pt", r"adapter checkpoint .* does not exist; pass a checkpoint written by training"),
    Row("missing checkpoint", "cli segment --adapter",
        lambda f: f.cli(f.image(), "--key-box", KEY, "--adapter", f.tmp / "none.pt"),
        2, "none.pt", r"error: adapter checkpoint .* does not exist; pass a checkpoint written by training"),
    # a checkpoint for another model
    Row("checkpoint for another model", "load_adapter (tiny adapter into tiny_tinyvit)",
        lambda f: load_adapter(f.peft("tiny_tinyvit"), f.adapter),
        ValueError, "tiny_lora_cbo.pt", r"was trained on model 'tiny', not 'tiny_tinyvit'; build the model with "
        r"--model tiny"),
    Row("checkpoint for another model", "build_model (tiny weights into tiny_tinyvit)",
        lambda f: build_model("tiny_tinyvit", checkpoint=f.weights),
        ValueError, "tiny.pth", r"does not fit model 'tiny_tinyvit': .*Check that --model matches the checkpoint"),
    Row("adapter given as base weights", "load_checkpoint_file", lambda f: load_checkpoint_file(f.adapter),
        ValueError, "tiny_lora_cbo.pt", r"is a monai_cbo adapter, not base model weights; pass it as the adapter"),
    Row("base weights given as adapter", "read_adapter", lambda f: read_adapter(f.weights),
        ValueError, "tiny.pth", r"is not a monai_cbo adapter checkpoint .*; pass an adapter written by training"),
    # an adapter with another rank / of another preset
    Row("adapter with another rank", "load_adapter", lambda f: load_adapter(f.peft("tiny", rank=8), f.adapter),
        ValueError, "tiny_lora_cbo.pt", r"does not match the model's PEFT config: rank: checkpoint has 4, model has "
        r"8\. Load it with load_segmenter"),
    Row("adapter of another preset", "load_adapter", lambda f: load_adapter(f.peft("tiny", "adapter_cbo"), f.adapter),
        ValueError, "tiny_lora_cbo.pt", r"preset: checkpoint has 'lora_cbo', model has 'adapter_cbo'.*Load it with "
        r"load_segmenter"),
    # a 3D-box prompt JSON with boxes outside the volume
    Row("3D box outside the volume", "read_prompt_file", _read_outside_box,
        ValueError, "boxes.json", r"entry 0: box3d \[30, 30, 10, 40, 40, 12\] \(voxel\) lies outside the volume of "
        r"shape \(24, 20, 6\); give voxel indices"),
    Row("3D box outside the volume", "segment_case", lambda f: f.segment(image=f.image(), prompt_file=_outside_box(f)),
        ValueError, "boxes.json", r"lies outside the volume of shape \(24, 20, 6\); give voxel indices .*\"world\""),
    Row("3D box partly outside the volume", "segment_case (clipped)",
        lambda f: f.segment(image=f.image(), prompt_file=f.write("boxes.json", {
            "prompts": [{"label": 1, "box3d": [-5, -5, 4, 50, 50, 40]}]})), SAFE, check=_clipped_box),
    Row("key box outside the volume", "segment_case key", lambda f: f.segment(image=f.image(), key=KeyPrompt(
        [5, 4, 9, 14, 11, 9])), ValueError, "img.nii.gz", r"key box of .*: key_box .* lies outside the volume of shape "
        r"\(24, 20, 6\); give voxel indices"),
    Row("zero affine", "load_volume", lambda f: load_volume(_zero_affine(f)), ValueError, "zero.nii",
        r"degenerate affine .*; fix the header \(re-export the image, or set its sform / qform\)"),
    Row("zero affine", "cli segment", lambda f: f.cli(_zero_affine(f), "--key-box", KEY), 1, "zero.nii",
        r"degenerate affine"),
    Row("-o names a file", "cli segment", lambda f: f.write("out", "x") and f.cli(f.image(), "--key-box", KEY), 2,
        "out", r"is a file; give a folder for the masks"),
    Row("label id 10**30 in a prompt file", "cli segment --prompts",
        _prompt_cli({"prompts": [{"label": 10**30, "key_box": [5, 4, 2, 14, 11, 2]}]}), 2, "prompts.json",
        r"entry 0: label must be 1 \.\. 2147483647"),
    Row("NaN box in a prompt file", "cli segment --prompts",
        _prompt_cli('{"prompts": [{"label": 1, "box3d": [NaN, 4, 2, 14, 11, 2]}]}'), 2, "prompts.json",
        r"holds NaN; every number must be finite"),
    Row("too many point entries in a prompt file", "cli segment --prompts",
        _prompt_cli({"prompts": [{"label": 1, "points": [[5, 5, 2]], "point_labels": [1]}] * 5000}), 2,
        "prompts.json", r"has 5000 entries; give at most 1000"),
    Row("too many points in one entry", "cli segment --prompts",
        _prompt_cli({"prompts": [{"label": 1, "points": [[5, 5, 2]] * 5000, "point_labels": [1] * 5000}]}), 2,
        "prompts.json", r"more than 1000 points \(entry 0 brings 5000\)"),
    Row("--class 10**11", "cli segment --key-box", lambda f: f.cli(f.image(), "--key-box", KEY, "--class",
        str(10**11)), 2, "", r"label must be 1 \.\. 2147483647"),
]
# fmt: on


@pytest.fixture(scope="module")
def inferer() -> SliceWiseInferer:
    return SliceWiseInferer(build_model("tiny"), batch_size=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.save(build_model("tiny").state_dict(), folder / "tiny.pth")
    adapter = save_adapter(Files.peft("tiny"), folder / "tiny_lora_cbo.pt")
    return SimpleNamespace(adapter=adapter, weights=folder / "tiny.pth")


@pytest.fixture(autouse=True)
def _no_hang():
    def fail(*_):
        raise TimeoutError(f"a row ran for more than {ROW_SECONDS} s: bad input must not hang")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(ROW_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.case} | {r.entry}" for r in ROWS])
def test_bad_input(row: Row, tmp_path, capsys, inferer, trained):
    if row.case == "corrupt .nrrd" and importlib.util.find_spec("SimpleITK") is None:
        pytest.skip("SimpleITK is not installed (it reads NRRD; NIfTI needs no SimpleITK)")
    f = Files(tmp_path, inferer, trained)
    result = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(row.expect, type):
            with pytest.raises(Exception) as info:
                row.call(f)
            assert type(info.value) is row.expect, f"{type(info.value).__name__}: {info.value}"
            message = str(info.value)
            assert not f.out.exists(), "nothing is written for a bad input"
        elif isinstance(row.expect, int):
            result = row.call(f)
            message = "".join(capsys.readouterr())  # stdout, then stderr (where failures go)
            assert result == row.expect, message
            assert "Traceback" not in message
        else:
            result = row.call(f)
            message = "\n".join(str(w.message) for w in caught)
    if row.names:
        assert row.names in message, message
    if row.says:
        assert re.search(row.says, message), message
    if row.check is not None:
        row.check(f, result)
