from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from realdata import shared_data

from monai_cbo.inferers import Case, KeyPrompt, SliceWiseInferer, check_label, load_volume, segment_case
from monai_cbo.networks import build_model

HIPPO = "Task04_Hippocampus/{}/hippocampus_001.nii.gz"


def _reoriented_copy(src, dst, transform):
    """``src`` stored in another orientation of the same voxel grid: axes permuted / flipped, affine adjusted."""
    img = nib.load(src)
    ornt = np.array(transform, dtype=float)
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    nib.save(nib.Nifti1Image(data, affine), dst)
    return dst


@pytest.fixture(scope="module")
def tiny() -> SliceWiseInferer:
    return SliceWiseInferer(build_model("tiny"))


def test_a_label_stored_in_another_orientation_is_reoriented_onto_the_image(tmp_path):
    image = shared_data(HIPPO.format("imagesTr"))
    label = shared_data(HIPPO.format("labelsTr"))
    moved = _reoriented_copy(label, tmp_path / "lab_pir.nii.gz", [[1, -1], [2, 1], [0, -1]])  # permuted + flipped
    assert nib.load(moved).shape != nib.load(label).shape
    reference, classes = check_label(load_volume(label), load_volume(image))
    gt, moved_classes = check_label(load_volume(moved), load_volume(image))
    np.testing.assert_array_equal(gt, reference)
    assert moved_classes == classes == [1, 2]


def test_the_reoriented_pair_is_scored_like_the_original(tmp_path, tiny):
    image = shared_data(HIPPO.format("imagesTr"))
    label = shared_data(HIPPO.format("labelsTr"))
    moved = _reoriented_copy(label, tmp_path / "lab_flip.nii.gz", [[0, -1], [1, 1], [2, -1]])
    a = segment_case(tiny, Case(image, label=label), tmp_path / "a.nii.gz")
    b = segment_case(tiny, Case(image, label=moved), tmp_path / "b.nii.gz")
    assert [m["dice"] for m in a.metrics] == [m["dice"] for m in b.metrics]
    np.testing.assert_array_equal(nib.load(a.output).get_fdata(), nib.load(b.output).get_fdata())


def test_a_real_grid_mismatch_is_still_refused(tmp_path):
    image = shared_data(HIPPO.format("imagesTr"))
    label = nib.load(shared_data(HIPPO.format("labelsTr")))
    shifted = label.affine.copy()
    shifted[:3, 3] += 5.0  # the same orientation, moved by 5 mm
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(ValueError, match=r"shifted.nii.gz and image .* have different affines"):
        check_label(load_volume(tmp_path / "shifted.nii.gz"), load_volume(image))
    flipped_only = label.affine @ np.diag([-1.0, 1, 1, 1])  # flipped axis without moving the data: not the same grid
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), flipped_only), tmp_path / "mirrored.nii.gz")
    with pytest.raises(ValueError, match="different affines"):
        check_label(load_volume(tmp_path / "mirrored.nii.gz"), load_volume(image))


def test_several_key_boxes_and_points_through_segment_case(tmp_path, tiny):
    image = shared_data(HIPPO.format("imagesTr"))
    key = KeyPrompt([[10, 15, 12, 20, 30, 12], [10, 15, 20, 20, 30, 20]], label=2, points=[[15, 20, 16, 0]])
    result = segment_case(tiny, Case(image, key=key), tmp_path / "k.nii.gz")
    assert result.error is None and result.output.exists()
    assert nib.load(result.output).shape == nib.load(image).shape
    with pytest.raises(ValueError, match="point is i, j, k, label"):
        KeyPrompt([10, 15, 12, 20, 30, 12], points=[[1, 2, 3]])


def test_a_click_alone_starts_the_object_on_the_clicks_slice_in_any_orientation():
    """Without a box the first foreground click's slice is the key slice: the same slice a flat key box drawn
    there starts from, whatever the stored orientation (here i and j swapped, every axis flipped: slice k of
    the file is slice 11 - k of the view)."""
    from monai_cbo.inferers import SliceGeometry

    affine = np.array([[0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, -2.0, 0], [0, 0, 0, 1]])
    geometry = SliceGeometry.from_affine(affine, (20, 30, 12))
    for click in ([4, 9, 3], [17, 2, 10], [0, 29, 11]):
        spec = KeyPrompt(points=[[*click, 1], [5, 5, 5, 0]]).spec(geometry, "test")
        ((start, box, z_range),) = spec.key_boxes[1]
        assert box is None and z_range is None
        drawn = KeyPrompt([click[0], click[1], click[2], click[0] + 1, click[1] + 1, click[2]]).spec(geometry, "t")
        assert drawn.key_boxes[1][0][0] == start == 11 - click[2], click
        assert start in spec.points[1]
    with pytest.raises(ValueError, match="a key box or a foreground point"):
        KeyPrompt(points=[[1, 2, 3, 0]])
    with pytest.raises(ValueError, match="key_slice goes with a 3D box"):
        KeyPrompt(points=[[1, 2, 3, 1]], key_slice=3)


def test_each_slice_is_encoded_once_per_volume_for_every_class_and_key(tiny):
    import torch

    from monai_cbo.inferers import KeyBox, ObjectPrompt, Prompt2D, PropagationConfig, SliceGeometry, segment_volume
    from monai_cbo.inferers.prompts import VolumePrompts

    encoded = []
    hook = tiny.model.image_encoder.register_forward_hook(lambda _m, inp, _o: encoded.append(inp[0].shape[0]))
    try:
        volume = torch.rand(3, 32, 32, 8)
        keep_going = PropagationConfig(min_iou=0.0, min_similarity=-1.0, max_key_area=1e9)  # visit every slice
        prompts = VolumePrompts(
            slices={3: {z: Prompt2D(box=[2, 2, 20, 20]) for z in (1, 2)}},
            objects={
                1: ObjectPrompt([KeyBox(4, [4, 4, 24, 24])]),
                2: ObjectPrompt([KeyBox(1, [2, 2, 12, 12]), KeyBox(6, [3, 3, 14, 14])]),
            },
        )
        geometry = SliceGeometry((32, 32, 8), np.array([[0, 1], [1, 1], [2, 1]]))
        seg = segment_volume(tiny, volume, geometry, prompts, keep_going)
    finally:
        hook.remove()
    slices = {z for per in seg.results.values() for z in per}
    assert sum(encoded) == len(slices) == 8  # every slice visited, by three classes and four directions, once
    assert seg.labels.shape == (32, 32, 8)
