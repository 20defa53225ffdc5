"""Work not done: slices a 3D box or a propagation never reaches are never encoded, and the learned stop decodes
each slice's class prompts once however many objects ask."""

from __future__ import annotations

import numpy as np
import torch

from monai_cbo.inferers import KeyBox, ObjectPrompt, PropagationConfig, SliceResult, SliceWiseInferer
from monai_cbo.inferers.prompts import VolumePrompts
from monai_cbo.inferers.segment import segment_volume
from monai_cbo.inferers.volume import SliceGeometry
from monai_cbo.networks import build_model
from monai_cbo.stopwatch import recording

SIZE, DEPTH = 32, 12


class BoxFollower(SliceWiseInferer):
    """The real encoder of a tiny model, counted, with a decoder that returns a known object inside the box it is
    given: where propagation goes then depends on the rules alone, not on a random network."""

    def __init__(self, scene: np.ndarray) -> None:
        super().__init__(build_model("tiny"), batch_size=2)
        self.scene = torch.as_tensor(scene)
        self.encoded: list[int] = []  # slices the model's encoder saw, in order
        self.class_decodes: list[int] = []
        self.rows = 0
        encode = self.model.encode

        def counted(batch: torch.Tensor) -> torch.Tensor:
            self.rows += len(batch)
            return encode(batch)

        self.model.encode = counted

    def _model_input(self, volume, z):
        self.encoded.append(int(z))
        return super()._model_input(volume, z)

    def encode(self, volume, slices, cache=None):
        for z, emb in super().encode(volume, slices, cache):
            self.current = z
            yield z, emb

    def decode(self, embedding, prompts, size):
        out = []
        for p in prompts:
            x0, y0, x1, y1 = (int(round(v)) for v in p.box)
            prob = torch.zeros(size)
            prob[y0 : y1 + 1, x0 : x1 + 1] = self.scene[y0 : y1 + 1, x0 : x1 + 1, self.current].float()
            out.append(SliceResult(prob, 0.9, torch.zeros(8, 8)))
        return out

    def decode_classes(self, embedding, size):
        self.class_decodes.append(self.current)
        return [SliceResult(self.scene[..., self.current].float(), 0.9, torch.zeros(8, 8))]


def _scene(first: int, last: int) -> np.ndarray:
    rows, cols = np.ogrid[:SIZE, :SIZE]
    disc = (rows - 16) ** 2 + (cols - 16) ** 2 <= 36
    scene = np.zeros((SIZE, SIZE, DEPTH), dtype=bool)
    scene[..., first : last + 1] = disc[..., None]
    return scene


def _key(scene: np.ndarray, z: int) -> KeyBox:
    rows, cols = np.nonzero(scene[..., z])
    return KeyBox(z, [cols.min(), rows.min(), cols.max(), rows.max()])


CONFIG = PropagationConfig(min_similarity=-1.0, range_min_similarity=-1.0, range_min_confidence=0.0)


def _segment(inferer: BoxFollower, objects: dict[int, ObjectPrompt], config: PropagationConfig = CONFIG):
    volume = torch.rand(3, SIZE, SIZE, DEPTH)
    geometry = SliceGeometry.from_affine(np.eye(4), volume.shape[1:])
    with recording() as rec:
        seg = segment_volume(inferer, volume, geometry, VolumePrompts(objects=objects), config)
    return seg, rec


def test_a_3d_box_encodes_exactly_the_slices_of_its_range_and_none_outside():
    scene = _scene(0, DEPTH - 1)  # the object goes on past both ends of the box
    inferer = BoxFollower(scene)
    seg, rec = _segment(inferer, {1: ObjectPrompt([_key(scene, 5)], z_range=(3, 8))})
    assert sorted(seg.results[1]) == list(range(3, 9))
    assert sorted(inferer.encoded) == list(range(3, 9))  # each slice of the range once, none outside it
    assert inferer.rows == 6 and rec.counters["slices_encoded"] == 6


def test_slices_of_a_3d_box_past_where_propagation_stops_are_never_encoded():
    scene = _scene(0, 6)  # the object ends on slice 6, inside the box's range 3..10
    inferer = BoxFollower(scene)
    seg, _ = _segment(inferer, {1: ObjectPrompt([_key(scene, 5)], z_range=(3, 10))})
    assert sorted(seg.results[1]) == list(range(3, 7))
    assert sorted(inferer.encoded) == list(range(3, 8))  # slice 7 is visited (its mask is empty: the walk ends)
    assert inferer.rows == 5


def test_the_learned_stop_decodes_each_slice_once_for_every_object_of_a_volume():
    scene = _scene(2, 9)
    inferer = BoxFollower(scene)
    inferer.model.class_prompts = object()  # the learned stop is on only for a model with class prompts
    learned = CONFIG.replace(min_class_overlap=0.5)
    objects = {1: ObjectPrompt([_key(scene, 5)]), 2: ObjectPrompt([_key(scene, 6)])}  # the same slices, twice
    seg, rec = _segment(inferer, objects, learned)
    visited = sorted(set(inferer.encoded))
    assert sorted(seg.results[1]) == sorted(seg.results[2]) == list(range(2, 10))
    assert sorted(inferer.class_decodes) == visited  # one class-decode pass per slice, not one per object
    assert sorted(inferer.encoded) == visited  # and one encoder pass per slice
