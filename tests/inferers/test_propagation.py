from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_cbo.inferers import (
    KeyBox,
    ObjectPrompt,
    PropagationConfig,
    SliceResult,
    SliceWiseInferer,
    propagate,
)
from monai_cbo.inferers.propagation import (
    STOP_RULES,
    StopMeasures,
    box_edit_leftovers,
    click_box,
    matching_classes,
    stop_measures,
    stops,
)
from monai_cbo.networks import TRAINED_INTERACTION, SliceCache, build_model


class SceneInferer(SliceWiseInferer):
    """An inferer whose 'model' segments the foreground of a known scene inside the box it is given (as SAM does
    with a tight box), minus a disc around each background point: the propagation logic alone, without a network.
    Records the prompt every slice received."""

    def __init__(self, scene: np.ndarray) -> None:
        self.scene = torch.as_tensor(scene).bool()  # [H, W, D]
        self.model = torch.nn.Identity()  # no class prompts, never trained with clicks
        self.threshold = 0.5
        self.prompts: dict[int, list] = {}
        self.encoded: list[int] = []

    def encode(self, volume, slices, cache=None):
        for z in slices:
            if cache is not None and z in cache:
                yield z, cache[z]
                continue
            self.encoded.append(z)
            emb = torch.full((1, 4, 16, 16), float(z))  # every slice 'looks' the same to the similarity rule
            if cache is not None:
                cache[z] = emb
            yield z, emb

    def decode(self, embedding, prompts, size):
        z = int(embedding[0, 0, 0, 0])
        out = []
        for p in prompts:
            self.prompts.setdefault(z, []).append(p)
            prob = torch.zeros(size)
            rows, cols = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
            if p.box is not None:
                x0, y0, x1, y1 = (int(round(v)) for v in p.box)
                prob[y0 : y1 + 1, x0 : x1 + 1] = self.scene[y0 : y1 + 1, x0 : x1 + 1, z].float()
            else:  # clicks alone: the scene's foreground within 12 pixels of a foreground click
                for (x, y), label in zip(p.points, p.point_labels, strict=True):
                    if label == 1:
                        near = (rows - y) ** 2 + (cols - x) ** 2 <= 144
                        prob[near] = self.scene[..., z][near].float()
            for (x, y), label in zip(
                p.points if p.points is not None else [], p.point_labels if p.points is not None else [], strict=True
            ):
                if label == 0:
                    prob[(rows - y) ** 2 + (cols - x) ** 2 <= 36] = 0
            low_res = torch.nn.functional.avg_pool2d(prob[None, None], 4)[0, 0] - 0.25  # > 0: a quarter covered
            out.append(SliceResult(prob, 0.9, low_res))
        return out


def _disc(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _blob_scene(depth: int = 30, first: int = 5, last: int = 20) -> np.ndarray:
    """A sphere-like object on slices first..last, radius largest in the middle."""
    scene = np.zeros((64, 64, depth), dtype=bool)
    mid, half = (first + last) / 2, (last - first) / 2 + 0.5
    for z in range(first, last + 1):
        scene[..., z] = _disc((64, 64), (32, 32), max(2, 14 * np.sqrt(max(0.0, 1 - ((z - mid) / half) ** 2))))
    return scene


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)


VOLUME = torch.zeros(3, 64, 64, 30)


def test_one_key_box_follows_the_object_to_both_ends_and_stops_there():
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    results = propagate(inferer, VOLUME, ObjectPrompt([KeyBox(12, _box(scene[..., 12]))]))
    assert sorted(results) == list(range(5, 21))


def test_a_leak_past_the_end_stops_the_direction():
    scene = _blob_scene()
    scene[..., 21:] = _disc((64, 64), (32, 32), 30)[..., None]  # a large structure right after the object ends
    inferer = SceneInferer(scene)
    config = PropagationConfig(margin=0.1, min_margin=3, max_key_area=1e9, max_growth=1.5)  # the area-jump rule
    results = propagate(inferer, VOLUME, ObjectPrompt([KeyBox(12, _box(scene[..., 12]))]), config)
    assert max(results) == 20


class LearnedInferer(SceneInferer):
    """A scene inferer whose model also has learned class prompts that segment ``automatic`` (one [H, W, D] mask
    per class) on each slice: what an adapter trained with automatic steps would see on its own."""

    def __init__(self, scene: np.ndarray, automatic: list[np.ndarray]) -> None:
        super().__init__(scene)
        self.automatic = [torch.as_tensor(a).float() for a in automatic]
        self.model = type("Model", (), {"class_prompts": object()})()

    def decode_classes(self, embedding, size):
        z = int(embedding[0, 0, 0, 0])
        return [SliceResult(a[..., z], 0.9, torch.zeros(16, 16)) for a in self.automatic]


def test_the_learned_stop_ends_a_leak_where_the_adapters_own_mask_of_the_object_ends():
    scene = _blob_scene()
    scene[..., 21:] = _disc((64, 64), (32, 32), 3)[..., None]  # a look-alike that the box follows past the end
    elsewhere = np.zeros_like(scene)
    elsewhere[5:15, 5:15] = True  # another class, away from the object, on every slice
    key = ObjectPrompt([KeyBox(12, _box(scene[..., 12]))])
    config = PropagationConfig(max_key_area=1e9, min_iou=0.0, min_similarity=-1.0)
    learned = config.replace(min_class_overlap=0.5)
    # the adapter's second class is the object (it does not see the look-alike): found on the key slice, whatever
    # order its classes come in
    inferer = LearnedInferer(scene, [elsewhere, _blob_scene()])
    assert max(propagate(inferer, VOLUME, key, config)) == 29  # the plain rules miss the end
    assert sorted(propagate(inferer, VOLUME, key, learned)) == list(range(5, 21))
    # an adapter none of whose classes is the object: nothing to compare with, so the rule does not apply
    assert max(propagate(LearnedInferer(scene, [elsewhere]), VOLUME, key, learned)) == 29
    ranged = ObjectPrompt([KeyBox(12, _box(scene[..., 12]))], z_range=(0, 25))  # a 3D box: the range_ rule
    assert max(propagate(inferer, VOLUME, ranged, learned)) == 25
    assert max(propagate(inferer, VOLUME, ranged, learned.replace(range_min_class_overlap=0.5))) == 20


def test_a_click_picks_the_part_of_the_adapters_own_mask_under_it_and_the_walk_follows_that_class():
    """With class prompts, the click's part of the adapter's own class mask gives the key box (the click's own
    mask is partial here: 12 pixels around it on a disc of radius 14); the start click is not sent to the
    decoder again; the learned stop follows the class clicked, not a small class the key mask happens to cover."""
    scene = _blob_scene()
    scene[..., 21:] = _disc((64, 64), (32, 32), 3)[..., None]  # a look-alike past the end
    speck = np.zeros_like(scene)
    speck[29:36, 29:36, :] = True  # a small class inside the object on every slice, covering the look-alike
    inferer = LearnedInferer(scene, [speck, _blob_scene()])
    click = {12: (np.array([[42.0, 32.0]]), np.array([1]))}  # on the object, beside the speck
    config = PropagationConfig(max_key_area=1e9, max_growth=1e9, min_iou=0.0, min_class_overlap=0.5)
    results = propagate(inferer, VOLUME, ObjectPrompt([KeyBox(12, None)], points=click), config)
    first, second = inferer.prompts[12][:2]
    assert first.box is None and second.points is None
    full = _box(scene[..., 12])
    assert (second.box[:2] <= full[:2]).all() and (second.box[2:] >= full[2:]).all()
    assert np.array_equal(results[12].prob.numpy() > 0.5, scene[..., 12])
    assert sorted(results) == list(range(5, 21))  # the speck's class would have walked on into the look-alike
    key = ObjectPrompt([KeyBox(12, full)])  # a key box: every class its mask covers, the speck's too
    assert max(propagate(LearnedInferer(scene, [speck, _blob_scene()]), VOLUME, key, config)) == 29


def test_patience_walks_past_one_slice_that_breaks_a_rule_and_still_stops_at_the_end():
    """A slice where the rules fire once inside the object (here the adapter misses the object on slice 16) ends
    the walk with patience 1; with patience 2 that slice is kept because slice 17 holds again, and the two
    look-alike slices that break the rule in a row past the end are dropped."""
    scene = _blob_scene()
    scene[..., 21:] = _disc((64, 64), (32, 32), 3)[..., None]  # the look-alike past the end
    own = _blob_scene()
    own[..., 16] = False  # one slice the adapter misses inside the object
    inferer = LearnedInferer(scene, [own])
    key = ObjectPrompt([KeyBox(12, _box(scene[..., 12]))])
    config = PropagationConfig(
        max_key_area=1e9, max_growth=1e9, min_iou=0.0, min_similarity=-1.0, min_class_overlap=0.5, patience=1
    )
    assert sorted(propagate(inferer, VOLUME, key, config)) == list(range(5, 16))
    assert sorted(propagate(inferer, VOLUME, key, config.replace(patience=2))) == list(range(5, 21))
    ranged = ObjectPrompt(key.keys, z_range=(0, 29))  # a 3D box waits by its own range_patience, not patience
    rules = config.replace(range_min_class_overlap=0.5, patience=3)
    assert sorted(propagate(inferer, VOLUME, ranged, rules)) == list(range(5, 16))
    rules = rules.replace(range_patience=3)
    assert sorted(propagate(inferer, VOLUME, ranged, rules)) == list(range(5, 21))
    with pytest.raises(ValueError, match="patience"):
        PropagationConfig(patience=0)


def test_stop_measures_of_a_constructed_slice_and_the_rules_that_judge_them():
    """A 16-pixel mask after an 8-pixel one: every measure by hand, then each rule firing on its own threshold,
    for one slice and, as the sweep asks, for several slices against several settings at once."""
    prob = torch.zeros(10, 10)
    prob[2:6, 2:6] = 0.9
    prob[2:4, 2:4] = 0.7  # 16 pixels: 12 at 0.9, 4 at 0.7
    before = torch.zeros(10, 10)
    before[2:6, 2:4] = 0.8  # 8 pixels, all under the mask
    own = np.zeros((10, 10), dtype=bool)
    own[2:6, 2:5] = True  # the adapter's mask of the object's class: 12 of the 16 pixels
    result, previous = SliceResult(prob, 0.75, torch.zeros(4, 4)), SliceResult(before, 0.9, torch.zeros(4, 4))
    feature, key_feature = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])
    m = stop_measures(result, previous, 0.5, 20.0, feature, key_feature, [np.zeros_like(own), own], {1})
    assert (m.area, m.before_area, m.key_area, m.overlap, m.iou) == (16, 8, 20.0, 0.5, 0.75)
    assert m.confidence == pytest.approx((12 * 0.9 + 4 * 0.7) / 16, abs=1e-6)
    assert m.similarity == pytest.approx(0.6, abs=1e-6) and m.class_overlap == 0.75
    plain = stop_measures(result, previous, 0.5, 20.0)  # no features, no class: rules that cannot apply
    assert (plain.similarity, plain.class_overlap) == (-1.0, 1.0)
    empty = stop_measures(SliceResult(torch.zeros(10, 10), 0.1, torch.zeros(4, 4)), previous, 0.5, 20.0)
    assert (empty.area, empty.overlap, empty.confidence) == (0, 0.0, 0.0)

    lenient = PropagationConfig(max_growth=2.5, min_iou=0.0, min_similarity=-1.0, max_key_area=1.0)
    assert not stops(lenient, m, ranged=False)
    for rule, value in {
        "max_growth": 1.9,  # 16 > 1.9 x 8
        "min_shrink": 2.1,  # 16 < 2.1 x 8
        "min_overlap": 0.6,
        "min_iou": 0.8,
        "min_confidence": 0.9,
        "min_similarity": 0.7,
        "max_key_area": 0.7,  # 16 > 0.7 x 20
        "min_class_overlap": 0.8,
    }.items():
        assert stops(lenient.replace(**{rule: value}), m, ranged=False), rule
        assert not stops(lenient.replace(**{rule: value}), m, ranged=True), rule  # the range_ rule is off
    assert stops(lenient.replace(min_area=17), m, ranged=True)  # an empty mask ends any walk
    assert stops(lenient, empty, ranged=False)

    grid = SimpleNamespace(**{name: np.array([[getattr(lenient, name)] * 2]) for name in STOP_RULES})
    grid.min_iou = np.array([[0.0, 0.8]])  # two settings: the second stops at an IoU under 0.8
    grid.min_area = lenient.min_area
    both = stops(grid, StopMeasures.stack([m, empty]), ranged=False)
    assert both.tolist() == [[False, True], [True, True]]  # [slices, settings], as one call per cell would say


def test_matching_classes_finds_the_classes_of_an_object_or_of_its_parts():
    key = np.zeros((20, 20), dtype=bool)
    key[5:15, 5:15] = True
    part_a, part_b, away = np.zeros_like(key), np.zeros_like(key), np.zeros_like(key)
    part_a[5:15, 5:10], part_b[5:15, 10:15], away[0:3, 0:3] = True, True, True
    assert matching_classes([part_a, part_b, away], key) == {0, 1}  # an object that is the union of two classes
    assert matching_classes([key, away], part_a) == {0}  # a class larger than the object's mask still matches
    assert matching_classes([away, np.zeros_like(key)], key) == set()


def test_a_propagated_mask_never_outgrows_its_key_box_by_more_than_max_key_area():
    scene = np.zeros((64, 64, 30), dtype=bool)
    for z in range(30):  # a cone widening slowly (each step under the area-jump rule) from slice 10 upwards
        scene[..., z] = _disc((64, 64), (32, 32), 4 + max(0, z - 10) * 0.9)
    inferer = SceneInferer(scene)
    key = KeyBox(10, _box(scene[..., 10]))
    config = PropagationConfig(margin=0.2, min_margin=2, max_growth=2.0, max_key_area=1.5)
    results = propagate(inferer, VOLUME, ObjectPrompt([key]), config)
    areas = {z: int((r.prob > 0.5).sum()) for z, r in results.items()}
    assert max(areas.values()) <= 1.5 * key.area
    assert max(results) < 29  # the growth was cut before the end of the volume


def test_a_3d_box_never_leaves_its_z_range_and_starts_on_the_key_slice():
    scene = _blob_scene(first=2, last=27)
    inferer = SceneInferer(scene)
    prompt = ObjectPrompt([KeyBox(14, _box(scene[..., 14]))], z_range=(9, 18))
    results = propagate(inferer, VOLUME, prompt)
    assert sorted(results) == list(range(9, 19))


def test_a_3d_box_is_judged_by_its_own_range_rules_and_an_open_object_by_the_plain_ones():
    """A key box on a small slice of a growing object: the plain key-area rule ends an open walk as soon as the
    object outgrows the key box, while a 3D box whose range rule is off follows the object to its range's ends."""
    scene = _blob_scene(first=2, last=27)
    key = KeyBox(5, _box(scene[..., 5]))
    config = PropagationConfig(max_key_area=1.0, range_max_key_area=1e9)
    inferer = SceneInferer(scene)
    open_walk = propagate(inferer, VOLUME, ObjectPrompt([key]), config)
    assert 2 <= min(open_walk) and max(open_walk) < 9  # stopped where the cross-section outgrew the key box
    ranged = propagate(inferer, VOLUME, ObjectPrompt([key], z_range=(3, 20)), config)
    assert sorted(ranged) == list(range(3, 21))
    strict = propagate(inferer, VOLUME, ObjectPrompt([key], z_range=(3, 20)), config.replace(range_max_key_area=1.0))
    assert sorted(strict) == sorted(z for z in open_walk if 3 <= z <= 20)
    with pytest.raises(ValueError, match="range_max_growth must be > 1"):
        PropagationConfig(range_max_growth=0.5)


def test_slices_between_keys_are_prompted_from_both_keys_and_key_order_changes_nothing():
    scene = _blob_scene(first=2, last=27)
    keys = [KeyBox(z, _box(scene[..., z])) for z in (4, 14, 24)]
    config = PropagationConfig(neighbour_weight=0.0)  # the interpolated box alone, to see both keys in it

    inferer = SceneInferer(scene)
    forward = propagate(inferer, VOLUME, ObjectPrompt(list(keys)), config)
    box_at_9 = inferer.prompts[9][0].box
    np.testing.assert_allclose(box_at_9, 0.5 * keys[0].box + 0.5 * keys[1].box, atol=1e-4)

    moved = [KeyBox(4, keys[0].box + np.array([-2, -2, 2, 2])), keys[1], keys[2]]
    other = SceneInferer(scene)
    propagate(other, VOLUME, ObjectPrompt(moved), config)
    assert not np.allclose(other.prompts[9][0].box, box_at_9)  # a change of either key reaches the slice between

    shuffled = SceneInferer(scene)
    backward = propagate(shuffled, VOLUME, ObjectPrompt([keys[2], keys[0], keys[1]]), config)
    assert sorted(forward) == sorted(backward)
    for z in forward:
        torch.testing.assert_close(forward[z].prob, backward[z].prob)


def test_the_boxes_a_walk_draws_are_flagged_as_a_walks_and_the_users_are_not():
    """Every slice a walk prompts from its neighbour (beyond the keys and between them) gets ``walk=True`` (a model
    with a walk prompt reads those boxes so); a key slice's box, which the user drew, does not. A click key's box is
    the walk's (the grown box of what the click found)."""
    scene = _blob_scene(first=2, last=27)
    inferer = SceneInferer(scene)
    propagate(inferer, VOLUME, ObjectPrompt([KeyBox(z, _box(scene[..., z])) for z in (8, 20)]))
    assert {z for z, p in inferer.prompts.items() if not p[0].walk} == {8, 20}
    assert all(p[0].walk for z, p in inferer.prompts.items() if z not in (8, 20)) and len(inferer.prompts) > 20
    clicked = SceneInferer(scene)
    propagate(clicked, VOLUME, ObjectPrompt([KeyBox(12, None)], points={12: (np.array([[32.0, 32.0]]), [1])}))
    assert [p.walk for p in clicked.prompts[12]] == [False, True]  # the click, then the box of what it found


def test_every_slice_is_encoded_once_for_several_objects_sharing_a_cache():
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    cache = SliceCache()
    key = {z: KeyBox(z, _box(scene[..., z])) for z in (8, 12, 16)}
    for keys in ([key[12]], [key[8], key[16]]):
        propagate(inferer, VOLUME, ObjectPrompt(keys), cache=cache)
    assert sorted(inferer.encoded) == sorted(set(inferer.encoded))
    assert set(cache.stored.values()) == {1}


def test_a_background_point_removes_a_leak_on_its_slice_and_nearby_ones():
    scene = _blob_scene()
    scene[40:50, 40:50, :] = True  # another structure inside the box's reach on every slice
    inferer = SceneInferer(scene)
    key = KeyBox(12, np.array([16, 16, 50, 50], dtype=np.float32))  # the user's box also covers the other structure
    leaking = propagate(inferer, VOLUME, ObjectPrompt([key]), PropagationConfig(min_overlap=0.0))
    assert leaking[12].prob[45, 45] > 0.5
    fixed = propagate(
        inferer,
        VOLUME,
        ObjectPrompt([key], points={12: (np.array([[45.0, 45.0]]), np.array([0]))}),
        PropagationConfig(min_overlap=0.0, point_reach=2, click_boxes=False),  # points to the decoder
    )
    for z in (10, 11, 12, 13, 14):
        assert fixed[z].prob[45, 45] < 0.5
    assert fixed[12].prob[32, 32] > 0.5  # the object itself is kept


def test_click_box_widens_for_a_miss_and_cuts_the_nearest_side_past_a_leak():
    box = np.array([10, 10, 40, 30], dtype=np.float32)
    # a foreground point outside: the box takes it in, with the pad around it, clipped to the slice
    assert click_box(box, [[50, 20]], [1], 2, (64, 64)).tolist() == [10, 10, 52, 30]
    assert click_box(box, [[62, 20]], [1], 4, (64, 64)).tolist() == [10, 10, 63, 30]
    # a background point inside, nearest the right side: the right side moves to just before it
    assert click_box(box, [[36, 20]], [0], 2, (64, 64)).tolist() == [10, 10, 35, 30]
    # nearest the top: the top moves to just after it
    assert click_box(box, [[25, 12]], [0], 2, (64, 64)).tolist() == [10, 13, 40, 30]
    # the nearest cuts (right, then top) would leave a foreground point out: the next nearest side moves instead
    assert click_box(box, [[36, 20], [38, 15]], [0, 1], 2, (64, 64)).tolist() == [10, 10, 40, 19]
    # outside the box a background point changes nothing; no points, no change
    assert click_box(box, [[5, 5]], [0], 2, (64, 64)).tolist() == box.tolist()
    assert click_box(box, np.zeros((0, 2)), np.zeros(0), 2, (64, 64)).tolist() == box.tolist()


def test_box_edit_leftovers_are_the_points_a_box_edit_cannot_carry():
    box = np.array([10, 10, 40, 30], dtype=np.float32)
    points = np.array([[50, 20], [20, 25], [38, 12], [5, 5]], dtype=np.float32)
    labels = np.array([1, 1, 0, 0])  # fg outside, fg inside, bg inside (cut), bg outside (a leak past the box)
    edited = click_box(box, points, labels, 2, (64, 64))
    assert edited.tolist() == [10, 13, 52, 30]
    assert box_edit_leftovers(box, edited, points, labels).tolist() == [False, True, False, True]
    # a background cut refused (it would leave a foreground point out, on every side): the point stays inside
    squeezed = np.array([[25, 20], [24, 19], [26, 21]], dtype=np.float32)
    tight = np.array([22, 17, 28, 23], dtype=np.float32)
    kept = click_box(tight, squeezed, [0, 1, 1], 2, (64, 64))
    assert box_edit_leftovers(tight, kept, squeezed, np.array([0, 1, 1])).tolist() == [True, True, True]


def test_click_box_points_send_the_points_a_box_edit_cannot_carry_to_the_decoder():
    """Off (the default) a foreground click inside the box changes nothing: the decoder gets the same box. On, it
    goes to the decoder as a point with the box, on the slices it reaches; a click the edit carried does not."""
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    key = KeyBox(12, np.array([16, 16, 48, 48], dtype=np.float32))
    inside = {12: (np.array([[32.0, 32.0], [47.0, 47.0]]), np.array([1, 0]))}  # fg inside, bg cut by the edit

    def seen(**settings) -> dict[int, object]:
        inferer.prompts.clear()
        config = PropagationConfig(min_overlap=0.0, point_reach=1, **settings)
        propagate(inferer, VOLUME, ObjectPrompt([key], points=inside), config)
        return {z: prompts[-1] for z, prompts in inferer.prompts.items()}

    off, on = seen(), seen(click_box_points=True)
    assert all(p.points is None for p in off.values())
    for z in (11, 12, 13):
        assert on[z].points.tolist() == [[32.0, 32.0]] and on[z].point_labels.tolist() == [1]
        assert np.array_equal(on[z].box, off[z].box)  # the same edited box
    assert all(on[z].points is None for z in on if z not in (11, 12, 13))


def test_click_boxes_turn_correction_points_into_box_edits_the_decoder_never_sees():
    """A model that never saw a point in training gets none: the points of a slice they reach edit its box. A
    background point on a neighbouring structure that the box takes in cuts it out; a foreground point on a
    part the box missed takes it in; slices out of the points' reach keep their prompts bit for bit."""
    scene = _blob_scene()
    scene[26:38, 50:58, :] = True  # another structure right of the object, on every slice
    inferer = SceneInferer(scene)
    key = KeyBox(12, np.array([16, 16, 55, 48], dtype=np.float32))  # the box takes in the other structure
    config = PropagationConfig(min_overlap=0.0, max_growth=1e9, point_reach=1, click_boxes=True)
    leaking = propagate(inferer, VOLUME, ObjectPrompt([key]), config)
    assert leaking[12].prob[32, 53] > 0.5
    inferer.prompts.clear()
    cut = propagate(
        inferer, VOLUME, ObjectPrompt([key], points={12: (np.array([[50.0, 32.0]]), np.array([0]))}), config
    )
    for z in (11, 12, 13):
        assert cut[z].prob[32, 53] < 0.5 and cut[z].prob[32, 32] > 0.5  # the leak is gone, the object kept
        assert all(p.points is None for p in inferer.prompts[z])  # the decoder saw boxes only
    assert inferer.prompts[12][-1].box[2] == 49  # the right side moved past the point, at the leak's near edge
    # slices walked from the edited ones are prompted from masks without the leak: the walk ends with the object
    assert len(leaking) > 20 and sorted(cut) == list(range(5, 21))  # the leak carried the walk past both ends
    assert all(float(r.prob[26:38, 50:58].sum()) == 0 for r in cut.values())
    # a key box that misses part of the object: a foreground point there widens the box to take it in
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    short = KeyBox(12, np.array([18, 18, 32, 46], dtype=np.float32))  # ends at the object's middle column
    config = PropagationConfig(min_overlap=0.0, max_growth=1e9, point_reach=0, click_boxes=True)
    missing = propagate(inferer, VOLUME, ObjectPrompt([short]), config)[12]
    grown = propagate(
        inferer, VOLUME, ObjectPrompt([short], points={12: (np.array([[44.0, 32.0]]), np.array([1]))}), config
    )[12]
    assert missing.prob[32, 44] < 0.5 and grown.prob[32, 44] > 0.5
    assert grown.prob.sum() > missing.prob.sum() * 1.3


def test_box_edits_are_the_default_for_every_model_and_points_an_opt_in():
    """click_boxes is on by default, for a model trained with simulated clicks too (its adapter's record,
    TRAINED_INTERACTION, as load_adapter sets it, does not change it: box edits measured better on such adapters);
    False hands the points to the decoder."""
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    prompt = ObjectPrompt([KeyBox(12, _box(scene[..., 12]))], points={12: (np.array([[60.0, 60.0]]), np.array([0]))})

    def points_seen(config: PropagationConfig) -> bool:
        inferer.prompts.clear()
        propagate(inferer, VOLUME, prompt, config)
        return any(p.points is not None for p in inferer.prompts[12])

    assert PropagationConfig().click_boxes is True and not points_seen(PropagationConfig())
    setattr(inferer.model, TRAINED_INTERACTION, {"share": 0.5, "max_clicks": 5})
    assert not points_seen(PropagationConfig()) and points_seen(PropagationConfig(click_boxes=False))


def test_click_mask_prompt_hands_a_corrected_slice_its_mask_of_the_round_before():
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    key = KeyBox(12, _box(scene[..., 12]))
    config = PropagationConfig(point_reach=1, click_boxes=False, click_mask_prompt=True)
    first = propagate(inferer, VOLUME, ObjectPrompt([key]), config)
    inferer.prompts.clear()
    points = {12: (np.array([[32.0, 32.0]]), np.array([1]))}
    previous = {z: r.low_res for z, r in first.items()}
    propagate(inferer, VOLUME, ObjectPrompt([key], points=points, previous=previous), config)
    for z, prompts in inferer.prompts.items():
        logits = prompts[-1].mask_logits
        if z in (11, 12, 13):  # the points reach it: its own mask of the round before comes with them
            assert logits is not None and torch.equal(logits, previous[z])
        else:
            assert logits is None
    # off (the default), or with no round before, no slice gets one
    inferer.prompts.clear()
    off = PropagationConfig(point_reach=1, click_boxes=False)
    propagate(inferer, VOLUME, ObjectPrompt([key], points=points, previous=previous), off)
    propagate(inferer, VOLUME, ObjectPrompt([key], points=points), config)
    assert all(p.mask_logits is None for prompts in inferer.prompts.values() for p in prompts)


class MemoSceneInferer(SceneInferer):
    """The scene behind the library's decode memo: :meth:`SliceWiseInferer.decode` answers a prompt it has decoded
    before from the memo and calls the scene (recorded in ``prompts``) only for a new one."""

    def __init__(self, scene: np.ndarray) -> None:
        super().__init__(scene)
        self.decode_memo = SliceCache(None)

    _decode = SceneInferer.decode
    decode = SliceWiseInferer.decode


def _same_prompt(a, b) -> bool:
    arrays = all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in ((a.box, b.box), (a.points, b.points), (a.point_labels, b.point_labels))
    )
    logits = (a.mask_logits is None) == (b.mask_logits is None)
    return arrays and logits and (a.mask_logits is None or torch.equal(a.mask_logits, b.mask_logits))


def test_a_correction_round_decodes_only_the_slices_whose_prompt_it_changes():
    """A background click inside a leak between two keys removes it; the next round re-walks the object but
    decodes again only the slices whose prompt the click changed (its own, and the walk's slices after it up to
    where the keys' walks meet); every other slice's mask is the first round's, bit for bit. (A click on a miss
    adds: test_a_foreground_click_past_where_a_rule_ended_the_walk_carries_it_to_the_click.)"""
    scene = _blob_scene()
    scene[40:50, 40:50, 16:19] = True  # another structure beside the object on slices 16..18
    keys = [KeyBox(z, np.array([16, 16, 50, 50], dtype=np.float32)) for z in (6, 12, 18)]
    config = PropagationConfig(min_overlap=0.0, point_reach=0)
    inferer = MemoSceneInferer(scene)
    cache: dict = {}
    first = propagate(inferer, VOLUME, ObjectPrompt(list(keys)), config, cache)
    assert first[17].prob[45, 45] > 0.5  # the leak
    calls = {z: len(p) for z, p in inferer.prompts.items()}
    click = {17: (np.array([[45.0, 45.0]]), np.array([0]))}
    second = propagate(inferer, VOLUME, ObjectPrompt(list(keys), points=click), config, cache)
    decoded = {z for z, p in inferer.prompts.items() if len(p) > calls.get(z, 0)}
    assert second[17].prob[45, 45] < 0.5 and second[17].prob[32, 32] > 0.5  # the leak is cut, the object kept
    assert 17 in decoded and decoded <= {15, 16, 17}  # the click's slice and the walk after it, to the middle
    for z in set(first) - decoded:
        assert torch.equal(first[z].prob, second[z].prob), z  # not decoded again: the same mask, bit for bit
    for z in decoded:
        assert not _same_prompt(inferer.prompts[z][0], inferer.prompts[z][-1]), z  # decoded: its prompt changed
    assert all(z in second for z in first) and len(inferer.encoded) == len(set(inferer.encoded))  # encoded once


def test_a_click_alone_starts_an_object_and_propagates_from_its_slice():
    """No box: the click's slice is segmented from the click, then from the box of what it found grown by the
    margin (the models were trained on boxes; a click's first mask may be partial), and the object is walked from
    there to both ends, as from a key box."""
    scene = _blob_scene()
    inferer = SceneInferer(scene)
    click = {12: (np.array([[32.0, 32.0]]), np.array([1]))}
    results = propagate(inferer, VOLUME, ObjectPrompt([KeyBox(12, None)], points=click))
    assert sorted(results) == list(range(5, 21))
    assert all(np.array_equal(results[z].prob.numpy() > 0.5, scene[..., z]) for z in results)
    first, second = inferer.prompts[12][:2]
    assert first.box is None and second.box is not None  # the click, then the box of what it found
    found = _box(((np.arange(64)[:, None] - 32) ** 2 + (np.arange(64)[None] - 32) ** 2 <= 144) & scene[..., 12])
    assert (second.box[:2] < found[:2]).all() and (second.box[2:] > found[2:]).all()  # grown past the first mask
    by_box = propagate(SceneInferer(scene), VOLUME, ObjectPrompt([KeyBox(12, _box(scene[..., 12]))], points=click))
    assert sorted(by_box) == sorted(results)
    # a click on nothing: the slice's (empty) answer and no walk
    missed = propagate(
        SceneInferer(scene), VOLUME, ObjectPrompt([KeyBox(12, None)], points={12: (np.array([[2.0, 2.0]]), [1])})
    )
    assert list(missed) == [12] and not (missed[12].prob > 0.5).any()
    with pytest.raises(ValueError, match="no box and no foreground click"):
        ObjectPrompt([KeyBox(12, None)], points={12: (np.array([[32.0, 32.0]]), np.array([0]))})


def test_a_foreground_click_past_where_a_rule_ended_the_walk_carries_it_to_the_click():
    """A click on a slice the walk did not reach says the object is there: the walk goes at least that far, then
    the rules apply again (before, such a click could only shorten a walk)."""
    scene = _blob_scene()
    scene[..., 21:26] = _disc((64, 64), (32, 32), 20)[..., None]  # the object widens at once: the growth rule fires
    key = KeyBox(12, _box(scene[..., 12]))
    config = PropagationConfig(max_growth=1.5, max_key_area=1e9, min_iou=0.0, min_overlap=0.0, patience=1)
    assert max(propagate(SceneInferer(scene), VOLUME, ObjectPrompt([key]), config)) == 20
    click = {23: (np.array([[32.0, 32.0]]), np.array([1]))}
    carried = propagate(SceneInferer(scene), VOLUME, ObjectPrompt([key], points=click), config)
    assert sorted(carried) == list(range(5, 26))  # to the click, then on while the rules hold, to the end
    behind = {25: (np.array([[50.0, 50.0]]), np.array([0]))}  # a background click says nothing of the kind
    assert max(propagate(SceneInferer(scene), VOLUME, ObjectPrompt([key], points=behind), config)) == 20


def test_bad_object_prompts_are_refused():
    box = np.array([1, 1, 5, 5])
    with pytest.raises(ValueError, match="two key boxes of one class on slice"):
        ObjectPrompt([KeyBox(3, box), KeyBox(3, box)])
    with pytest.raises(ValueError, match="outside the box's slice range 5..9"):
        ObjectPrompt([KeyBox(3, box)], z_range=(5, 9))
    with pytest.raises(ValueError, match="at least one key box"):
        ObjectPrompt([])
    with pytest.raises(ValueError, match="inverted"):
        KeyBox(1, [5, 5, 1, 1])
    with pytest.raises(ValueError, match="unknown propagation setting"):
        PropagationConfig().replace(min_overlapp=0.5)
    with pytest.raises(ValueError, match="key slice 40 outside the volume"):
        propagate(SceneInferer(np.zeros((64, 64, 30), bool)), VOLUME, ObjectPrompt([KeyBox(40, box)]))


def test_the_real_inferer_propagates_with_a_tiny_model():
    inferer = SliceWiseInferer(build_model("tiny"), batch_size=2)
    volume = torch.rand(3, 32, 32, 6)
    cache = SliceCache()
    results = propagate(
        inferer,
        volume,
        ObjectPrompt([KeyBox(2, [4, 4, 20, 20])]),
        PropagationConfig(min_iou=0.0, min_overlap=0.0, min_shrink=0.0, max_growth=1e9, max_key_area=1e9),
        cache,
    )
    assert 2 in results and all(r.prob.shape == (32, 32) for r in results.values())
    assert set(cache.stored.values()) <= {1}


@pytest.mark.slow
def test_background_points_cut_a_leak_with_litemedsam():
    """Two touching bright discs; the box covers disc A and most of disc B, so LiteMedSAM takes in B too. A
    foreground point on A and background points on B cut the leak by more than half and keep most of A
    (LiteMedSAM was trained on boxes, so points correct rather than erase: the figures are stated in the docs)."""
    rows, cols = np.ogrid[:128, :128]
    a = (rows - 64) ** 2 + (cols - 50) ** 2 <= 18**2
    b = (rows - 64) ** 2 + (cols - 82) ** 2 <= 14**2
    image = np.full((128, 128), 0.1, dtype=np.float32)
    image[a | b] = 0.8
    volume = torch.from_numpy(np.repeat(image[None, :, :, None], 3, axis=0).repeat(3, axis=3))
    inferer = SliceWiseInferer(build_model("litemedsam"))
    key = KeyBox(1, [30, 44, 90, 84])
    config = PropagationConfig(min_overlap=0.0, click_boxes=False)  # the points go to LiteMedSAM's decoder
    cache = SliceCache()
    leaking = propagate(inferer, volume, ObjectPrompt([key]), config, cache)[1].prob.numpy() > 0.5
    points = {1: (np.array([[50.0, 64.0], [88.0, 64.0], [80.0, 64.0]]), np.array([1, 0, 0]))}
    fixed = propagate(inferer, volume, ObjectPrompt([key], points=points), config, cache)
    mask = fixed[1].prob.numpy() > 0.5
    assert leaking[b].mean() > 0.5 and mask[b].mean() < 0.5 * leaking[b].mean()
    assert mask[a].mean() > 0.8


# real volumes of three kinds from the validation part of docs/benchmarks/propagation/suite.json where the
# published table shows one key box at >= 0.85 of per-slice boxes (it does not hold on every set: see the docs):
# (image, label, label values of the target, modality, channels, CT window)
# The CT keeps the window the propagation defaults were swept with, (-500, 1000), as the suite's published figures
# do: with the zero-shot default window now (-160, 240) (docs/benchmarks/ct_window.md) the right kidney's key
# slice is segmented smaller, its first neighbours break max_growth 1.2 and min_iou 0.8 three slices in a row,
# and one key box falls to 0.32 (per-slice boxes 0.90). The propagation sweep is being rerun on the new window
# (docs/benchmarks/propagation.md); this pin goes when its defaults are in.
BRATS = "BraTS2015_deepmedic/brats_2013_pat0005_1/"
REAL_VOLUMES = {
    "CT right kidney": (
        "TotalSegmentator_examples/example_ct.nii.gz",
        "TotalSegmentator_examples/example_seg_fast_force_split.nii.gz",
        [2],
        "ct",
        None,
        (-500.0, 1000.0),
    ),
    "breast MRI lesion (NRRD)": (
        "pyradiomics_nrrd/breast1_image.nrrd",
        "pyradiomics_nrrd/breast1_label.nrrd",
        [1],
        "mri",
        None,
        None,
    ),
    "brain tumour core (FLAIR + T1c)": (
        [BRATS + "Flair_subtrMeanDivStd.nii.gz", BRATS + "T1c_subtrMeanDivStd.nii.gz"],
        BRATS + "OTMultiClass.nii.gz",
        [1, 3, 4],
        "mri",
        [0, 1],
        None,
    ),
}


@pytest.fixture(scope="module")
def litemedsam_inferer() -> SliceWiseInferer:
    return SliceWiseInferer(build_model("litemedsam"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_VOLUMES))
def test_one_key_box_on_real_volumes_keeps_most_of_the_per_slice_box_dice(name, litemedsam_inferer):
    """With the default settings (chosen by the sweep on other volumes): one key box on the largest slice keeps
    >= 0.85 of the Dice of a box on every slice; a 3D box predicts nothing outside its slices; no propagated
    mask outgrows max_key_area x its key box."""
    from realdata import shared_data

    from monai_cbo.bench.prompting import SuiteCase, protocol_prompt
    from monai_cbo.bench.protocols import _load, _score

    image, label, values, modality, channels, window = REAL_VOLUMES[name]
    image = [str(shared_data(p)) for p in image] if isinstance(image, list) else str(shared_data(image))
    label = str(shared_data(label))
    case = SuiteCase("test", name, image, label, "validation", modality, {"target": values}, channels, window)
    loaded = _load(case, None, "litemedsam")
    config = PropagationConfig()
    rows = {r["protocol"]: r for r in _score(litemedsam_inferer, loaded, ["per_slice", "one_key", "box3d"], config)}
    assert rows["one_key"]["dice"] >= 0.85 * rows["per_slice"]["dice"], rows
    assert rows["box3d"]["slices_outside"] == 0
    prompt = protocol_prompt(loaded.masks["target"], "one_key")
    results = propagate(litemedsam_inferer, loaded.volume, prompt, config, loaded.cache)
    key = prompt.keys[0]
    areas = [int((r.prob > 0.5).sum()) for z, r in results.items() if z != key.slice]
    assert max(areas, default=0) <= config.max_key_area * key.area
