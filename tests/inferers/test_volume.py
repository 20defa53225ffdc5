from __future__ import annotations

import gzip
import importlib.util
import warnings

import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_dicom_series
from realdata import shared_data

from monai_cbo.inferers import (
    Case,
    Preprocess,
    SliceGeometry,
    SliceWiseInferer,
    load_volume,
    prepare_volume,
    segment_case,
)
from monai_cbo.networks import build_model

GEOMETRY_CASES = {
    "hippocampus": (
        "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz",
        "Task04_Hippocampus/labelsTr/hippocampus_001.nii.gz",
    ),
    "brats": (
        "BraTS2015_deepmedic/brats_2013_pat0003_1/Flair_subtrMeanDivStd.nii.gz",
        "BraTS2015_deepmedic/brats_2013_pat0003_1/OTMultiClass.nii.gz",
    ),
    "totalsegmentator": (
        "TotalSegmentator_examples/example_ct_sm.nii.gz",
        "TotalSegmentator_examples/example_seg.nii.gz",
    ),
    "nrrd": ("pyradiomics_nrrd/brain1_image.nrrd", "pyradiomics_nrrd/brain1_label.nrrd"),
}


@pytest.fixture(scope="module")
def tiny_inferer() -> SliceWiseInferer:
    # geometry does not depend on the model's quality: a tiny random model keeps this fast
    return SliceWiseInferer(build_model("tiny"), batch_size=16)


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_written_mask_has_the_input_geometry(tmp_path, tiny_inferer, name):
    image_rel, label_rel = GEOMETRY_CASES[name]
    if not image_rel.endswith(".nii.gz") and importlib.util.find_spec("SimpleITK") is None:
        pytest.skip("SimpleITK is not installed (it reads NRRD; NIfTI needs no SimpleITK)")
    image_path, label_path = shared_data(image_rel), shared_data(label_rel)
    result = segment_case(tiny_inferer, Case(image=image_path, label=label_path), tmp_path / "mask.nii.gz")
    written = nib.load(result.output)
    reference = load_volume(image_path)
    assert written.shape == tuple(reference.shape[1:])
    np.testing.assert_allclose(written.affine, reference.affine.numpy(), atol=1e-4)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(reference.affine.numpy())
    if image_path.name.endswith(".nii.gz"):
        np.testing.assert_allclose(written.affine, nib.load(image_path).affine, atol=1e-5)
        assert written.header["sform_code"] == nib.load(image_path).header["sform_code"]
    assert result.slices > 0 and {m["class"] for m in result.metrics}


def test_sliced_view_is_ras_with_the_slicing_axis_last_and_round_trips():
    # stored axes: 0 runs anterior->posterior (flipped A), 1 runs inferior->superior, 2 runs left->right
    affine = np.array([[0, 0, 3.0, 0], [-2.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])
    labels = np.arange(24).reshape(2, 3, 4)
    geometry = SliceGeometry.from_affine(affine, labels.shape)  # axial: RAS order (R, A, S)
    sliced = geometry.to_sliced(labels)
    assert sliced.shape == geometry.sliced_shape == (4, 2, 3)
    assert sliced[1, 0, 2] == labels[1, 2, 1]  # A flipped: sliced row 0 is stored row 1 (most anterior)
    assert np.array_equal(geometry.to_stored(sliced), labels)
    np.testing.assert_array_equal(geometry.voxels_to_sliced([[1, 2, 1]]), [[1, 0, 2]])
    for view in range(3):
        g = SliceGeometry.from_affine(affine, labels.shape, view)
        assert np.array_equal(g.to_stored(g.to_sliced(labels)), labels)


def test_prepare_volume_maps_ct_and_mri_to_unit_range():
    ct = load_volume(shared_data("TotalSegmentator_examples/example_ct_sm.nii.gz"))
    volume, geometry = prepare_volume(ct, Preprocess())
    assert volume.shape == (3, 122, 101, 30) and geometry.sliced_shape == (122, 101, 30)  # stored RAS already
    assert float(volume.min()) == 0.0 and float(volume.max()) <= 1.0
    assert float((volume == 0).float().mean()) > 0.05  # air sits below the default -500 HU window
    mri = load_volume(shared_data("Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz"))
    volume, _ = prepare_volume(mri, Preprocess())
    assert 0.0 <= float(volume.min()) and float(volume.max()) == pytest.approx(1.0)


def test_a_volume_scaled_as_the_other_modality_is_warned_about(tmp_path):
    """A CT bundle given an MR (or an MRI bundle a CT) scales it as the wrong modality: warned, naming the file;
    the right modality, and auto (which decides per volume), stay quiet."""
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 300, size=(24, 24, 4)).astype(np.float32)
    ct[:4] = -1000  # air in HU
    mr = rng.uniform(0, 900, size=(24, 24, 4)).astype(np.float32)
    images = {n: load_volume(_nifti(tmp_path / f"{n}.nii.gz", data)) for n, data in (("ct", ct), ("mr", mr))}
    with pytest.warns(UserWarning, match=r"mr\.nii\.gz is scaled with a CT window, but holds no air"):
        prepare_volume(images["mr"], Preprocess(modality="ct"))
    with pytest.warns(UserWarning, match=r"ct\.nii\.gz is scaled as MRI, but holds air in HU"):
        prepare_volume(images["ct"], Preprocess(modality="mri"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, modality in (("ct", "ct"), ("mr", "mri"), ("ct", "auto"), ("mr", "auto")):
            prepare_volume(images[name], Preprocess(modality=modality))


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_bad_inputs_give_clear_errors(tmp_path, tiny_inferer):
    good = _nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.nii.gz is empty"):
        load_volume(tmp_path / "empty.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read .*truncated.nii.gz.*corrupt or truncated"):
        load_volume(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(ValueError, match="cannot read .*garbage.nii.gz"):
        load_volume(garbage)
    flat = _nifti(tmp_path / "flat.nii.gz", np.zeros((16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="flat.nii.gz has 2 spatial dimensions .* a 3D volume is needed"):
        load_volume(flat)
    four = _nifti(tmp_path / "four.nii.gz", np.zeros((8, 8, 4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="image has 2 channels; pass channels"):
        prepare_volume(load_volume(four), Preprocess())
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    with pytest.raises(ValueError, match="not_dicom is a folder without a DICOM series"):
        load_volume(folder)


def test_label_geometry_mismatch_is_refused(tmp_path, tiny_inferer):
    image = _nifti(tmp_path / "img.nii.gz", np.zeros((16, 16, 4), dtype=np.float32))
    small = _nifti(tmp_path / "small.nii.gz", np.zeros((16, 16, 3), dtype=np.uint8))
    shifted = _nifti(tmp_path / "shifted.nii.gz", np.zeros((16, 16, 4), dtype=np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"label .*small.nii.gz has shape \(16, 16, 3\) but image .*\(16, 16, 4\)"):
        segment_case(tiny_inferer, Case(image=image, label=small), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="different affines"):
        segment_case(tiny_inferer, Case(image=image, label=shifted), tmp_path / "b.nii.gz")
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()


def test_nan_and_constant_images_segment_without_nan(tmp_path, tiny_inferer):
    array = np.full((16, 16, 4), 7.0, dtype=np.float32)
    array[0, 0, 0] = np.nan
    image = _nifti(tmp_path / "nan.nii.gz", array)
    label = np.zeros((16, 16, 4), dtype=np.uint8)
    label[4:10, 4:10, 1:3] = 1
    with pytest.warns(UserWarning, match=r"nan.nii.gz has 1 NaN / Inf voxel\(s\)"):
        result = segment_case(
            tiny_inferer, Case(image=image, label=_nifti(tmp_path / "lab.nii.gz", label)), tmp_path / "out.nii.gz"
        )
    assert result.output.exists() and np.isfinite(result.metrics[0]["dice"])


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path, tiny_inferer):
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is not installed (it reads DICOM series)")
    array = (np.random.default_rng(1).random((5, 12, 10)) * 1000).astype(np.int16)  # (z, y, x)
    series = write_dicom_series(sitk, tmp_path / "series", array, (0.8, 0.7, 2.5), (10.0, -20.0, 30.0))
    volume = load_volume(series)
    assert tuple(volume.shape) == (1, 10, 12, 5)
    np.testing.assert_allclose(np.diag(volume.affine.numpy())[:3], [-0.8, -0.7, 2.5], atol=1e-4)  # LPS -> RAS
    label = np.zeros((10, 12, 5), dtype=np.uint8)
    label[2:6, 3:8, 1:4] = 1
    label_path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, volume.affine.numpy()), label_path)
    result = segment_case(tiny_inferer, Case(image=series, label=label_path), tmp_path / "series_seg.nii.gz")
    np.testing.assert_allclose(nib.load(result.output).affine, volume.affine.numpy(), atol=1e-4)
