from __future__ import annotations

import json

import numpy as np
import pytest

from monai_cbo.inferers import SliceGeometry, prompts_from_label, prompts_from_spec, read_prompt_file

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])  # 2 x 2 x 3 mm voxels, origin 0, stored RAS
SHAPE = (20, 30, 10)
AXIAL = SliceGeometry.from_affine(AFFINE, SHAPE)


def _write(tmp_path, payload) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return str(path)


def test_label_boxes_are_tight_and_in_sam_order():
    label = np.zeros(SHAPE, dtype=np.int16)
    label[3:8, 10:20, 4] = 2  # rows 3..7, columns 10..19 on slice 4
    label[5, 5, 6] = 2
    prompts = prompts_from_label(label)
    assert list(prompts) == [2] and sorted(prompts[2]) == [4, 6]
    np.testing.assert_array_equal(prompts[2][4].box, [10, 3, 19, 7])
    np.testing.assert_array_equal(prompts[2][6].box, [5, 5, 5, 5])
    assert prompts_from_label(label, min_pixels=2)[2].keys() == {4}


def test_voxel_box3d_gives_a_box_on_each_slice_it_spans(tmp_path):
    path = _write(tmp_path, {"prompts": [{"label": 1, "box3d": [2, 3, 4, 6, 9, 5]}]})
    prompts = prompts_from_spec(read_prompt_file(path, AFFINE, AXIAL)).slices
    assert sorted(prompts[1]) == [4, 5]
    np.testing.assert_array_equal(prompts[1][4].box, [3, 2, 9, 6])  # x = column (j), y = row (i)


def test_world_coordinates_and_another_slicing_axis(tmp_path):
    # world box (mm) -> voxels (1..3, 2..4, 2..3); sliced along axis 0, the 2D axes are (j, k)
    path = _write(tmp_path, {"coordinates": "world", "prompts": [{"label": 3, "box3d": [2, 4, 6, 6, 8, 9]}]})
    spec = read_prompt_file(path, AFFINE, SliceGeometry.from_affine(AFFINE, SHAPE, 0))
    np.testing.assert_array_equal(spec.boxes3d[3], [2, 2, 1, 4, 3, 3])


def test_voxel_prompts_follow_a_flipped_stored_orientation(tmp_path):
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # stored L->R and P->A reversed: the sliced view flips both
    path = _write(tmp_path, {"prompts": [{"label": 1, "box3d": [2, 3, 4, 6, 9, 5]}]})
    box = read_prompt_file(path, lps, SliceGeometry.from_affine(lps, SHAPE)).boxes3d[1]
    np.testing.assert_array_equal(box, [19 - 6, 29 - 9, 4, 19 - 2, 29 - 3, 5])


def test_boxes_are_clipped_and_a_box_outside_is_refused(tmp_path):
    clipped = _write(tmp_path, {"prompts": [{"label": 1, "box3d": [-5, -5, 8, 50, 50, 20]}]})
    np.testing.assert_array_equal(read_prompt_file(clipped, AFFINE, AXIAL).boxes3d[1], [0, 0, 8, 19, 29, 9])
    outside = _write(tmp_path, {"prompts": [{"label": 1, "box3d": [0, 0, 30, 5, 5, 40]}]})
    with pytest.raises(ValueError, match=r"prompts.json, entry 0: box3d .* outside the volume of shape \(20, 30, 10\)"):
        read_prompt_file(outside, AFFINE, AXIAL)


def test_key_box_and_points(tmp_path):
    path = _write(
        tmp_path,
        {
            "prompts": [
                {"label": 1, "key_box": [2, 3, 5, 6, 9, 5]},
                {"label": 2, "points": [[4, 5, 7], [6, 6, 7], [1, 1, 2]], "point_labels": [1, 0, 1]},
            ]
        },
    )
    spec = read_prompt_file(path, AFFINE, AXIAL)
    [(k, box, z_range)] = spec.key_boxes[1]
    assert k == 5 and box.tolist() == [3, 2, 9, 6] and z_range is None
    volume_prompts = prompts_from_spec(spec)
    assert [(key.slice, key.box.tolist()) for key in volume_prompts.objects[1].keys] == [(5, [3, 2, 9, 6])]
    prompts = volume_prompts.slices
    assert sorted(prompts[2]) == [2, 7] and 1 not in prompts
    np.testing.assert_array_equal(prompts[2][7].points, [[5, 4], [6, 6]])
    np.testing.assert_array_equal(prompts[2][7].point_labels, [1, 0])


@pytest.mark.parametrize(
    "payload,message",
    [
        ({"boxes": []}, "needs a 'prompts' list"),
        ({"prompts": [{"box3d": [0, 0, 0, 1, 1, 1]}]}, "needs an integer 'label'"),
        ({"prompts": [{"label": 0, "box3d": [0, 0, 0, 1, 1, 1]}]}, r"label must be 1 \.\. 2147483647"),
        ({"prompts": [{"label": 10**30, "key_box": [0, 0, 0, 1, 1, 0]}]}, r"label must be 1 \.\. 2147483647"),
        ({"prompts": [{"label": "1", "box3d": [0, 0, 0, 1, 1, 1]}]}, "label must be an integer"),
        ({"prompts": [{"label": 1, "box3d": [float("nan"), 0, 0, 1, 1, 1]}]}, "holds NaN"),
        ({"prompts": [{"label": 1, "key_box": [0, 0, 0, 1, 1, float("inf")]}]}, "holds Infinity"),
        ({"prompts": [{"label": 1, "box3d": [0, 0, 0, 1e300, 1, 1]}]}, "not a finite coordinate"),
        ({"prompts": [{"label": 1, "key_box": [2, 2, 1, 5, 5, 4], "key_slice": "x"}]}, "key_slice must hold numbers"),
        ({"prompts": [{"label": 1, "points": [[1, 1]], "point_labels": [1]}]}, r"\[i, j, k\] triples"),
        ({"prompts": [{"label": 1, "points": [[1, 1, 1]], "point_labels": [1]}] * 1001}, "1001 entries; give at most"),
        (
            {"prompts": [{"label": 1, "points": [[1, 1, 1]] * 1001, "point_labels": [1] * 1001}]},
            "more than 1000 points",
        ),
        ({"prompts": [{"label": 1, "key_box": [[0, 0, k, 1, 1, k] for k in range(1001)]}]}, "more than 1000 key boxes"),
        ({"prompts": [{"label": 1, "box3d": [0, 0, 0, 1, 1]}]}, "needs 6 numbers"),
        ({"prompts": [{"label": 1}]}, "exactly one of"),
        ({"coordinates": "mm", "prompts": []}, "coordinates must be 'voxel' or 'world'"),
        ({"prompts": [{"label": 1, "points": [[99, 0, 0]], "point_labels": [1]}]}, "lie outside the volume"),
        ({"prompts": [{"label": 1, "points": [[1, 1, 1]]}]}, "points need 'point_labels', one per point"),
        ({"prompts": [{"label": 1, "points": [[1, 1, 1]], "point_labels": [2]}]}, "must be 1 .* or 0"),
        (
            {"prompts": [{"label": 1, "key_box": [2, 2, 3, 5, 5, 3]}, {"label": 1, "key_box": [1, 1, 3, 6, 6, 3]}]},
            "class 1 already has a key box on slice 3",
        ),
        ({"prompts": [{"label": 1, "key_box": [[2, 2, 3, 5, 5, 3], [2, 2, 3, 5, 5, 3]]}]}, "already has a key box"),
        ({"prompts": [{"label": 1, "key_box": [2, 2, 30, 5, 5, 30]}]}, r"key_box .* lies outside the volume"),
        ({"prompts": [{"label": 1, "key_box": [2, 2, 1, 5, 5, 4], "key_slice": 8}]}, "key slice 8 is not inside"),
        ({"prompts": [{"label": 1, "box3d": [2, 2, 1, 5, 5, 4], "key_slice": 2}]}, "key_slice goes with a key_box"),
    ],
)
def test_bad_prompt_files_name_the_file_and_the_problem(tmp_path, payload, message):
    with pytest.raises(ValueError, match=message):
        read_prompt_file(_write(tmp_path, payload), AFFINE, AXIAL)


def test_unreadable_prompt_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_prompt_file(bad, AFFINE, AXIAL)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_prompt_file(tmp_path / "missing.json", AFFINE, AXIAL)


def test_a_correction_click_lands_in_the_largest_error_farthest_from_its_border():
    """The interactive protocol's simulated user: a foreground click in the middle of the largest miss, a
    background click in the middle of the largest leak, whichever region is larger; nothing for a perfect mask."""
    from monai_cbo.inferers.prompts import correction_click

    truth = np.zeros((30, 40, 12), dtype=bool)
    truth[5:25, 5:25, 2:10] = True
    pred = truth.copy()
    pred[8:13, 10:15, 3:8] = False  # a 5 x 5 x 5 miss centred at row 10, column 12, slice 5
    pred[28:30, 30:32, 0:2] = True  # a 2 x 2 x 2 leak
    click = correction_click(pred, truth)
    assert (click.slice, click.point, click.label, click.region) == (5, (12, 10), 1, 125)
    pred = truth.copy()
    pred[2:5, 30:37, 4:7] = True  # a leak of 3 x 7 x 3 = 63, centred at row 3, column 33, slice 5
    pred[20:22, 20:22, 5] = False  # a miss of 4
    click = correction_click(pred, truth)
    assert (click.slice, click.point, click.label, click.region) == (5, (33, 3), 0, 63)
    assert correction_click(truth, truth) is None
    with pytest.raises(ValueError, match="differ in shape"):
        correction_click(truth[..., :3], truth)
