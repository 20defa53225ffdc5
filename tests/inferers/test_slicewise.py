from __future__ import annotations

import numpy as np
import pytest
import torch
from realdata import shared_data

from monai_cbo.inferers import (
    KeyBox,
    ObjectPrompt,
    Preprocess,
    Prompt2D,
    PropagationConfig,
    SliceWiseInferer,
    load_volume,
    prepare_volume,
    prompts_from_label,
    propagate,
)
from monai_cbo.metrics import dice_3d
from monai_cbo.models import build_segmenter
from monai_cbo.networks import SliceCache, build_model, encoder_stages, feature_cache


@pytest.fixture()
def tiny() -> SliceWiseInferer:
    return SliceWiseInferer(build_model("tiny"), batch_size=3)


def _encoded(inferer) -> list[int]:
    sizes = []
    inferer.model.image_encoder.register_forward_hook(lambda _m, inp, _o: sizes.append(inp[0].shape[0]))
    return sizes


def test_only_prompted_slices_are_encoded_once_in_batches(tiny):
    volume = torch.rand(3, 40, 30, 12)
    box = Prompt2D(box=[2, 2, 20, 30])
    prompts = {1: {z: box for z in (1, 2, 3, 7)}, 2: {z: box for z in (2, 7, 9)}}
    sizes = _encoded(tiny)
    results = tiny.predict(volume, prompts)
    assert sizes == [3, 2]  # slices 1, 2, 3, 7, 9 in batches of 3: shared slices are encoded once
    assert sorted(results[1]) == [1, 2, 3, 7] and sorted(results[2]) == [2, 7, 9]
    assert results[1][1].prob.shape == (40, 30) and 0 <= results[1][1].prob.min() <= results[1][1].prob.max() <= 1


def test_a_cache_lets_a_second_call_reuse_embeddings(tiny):
    volume = torch.rand(3, 32, 32, 6)
    sizes = _encoded(tiny)
    cache: dict = {}
    first = tiny.predict(volume, {1: {2: Prompt2D(box=[1, 1, 20, 20])}}, cache=cache)
    both = {1: {2: Prompt2D(box=[1, 1, 20, 20])}, 3: {4: Prompt2D(box=[0, 0, 9, 9])}}
    second = tiny.predict(volume, both, cache=cache)
    assert sizes == [1, 1]  # slice 2 once, then only slice 4
    torch.testing.assert_close(first[1][2].prob, second[1][2].prob)


def test_a_front_cache_and_a_decode_memo_change_no_output_bit():
    """The frozen encoder front from a shared cache (as the bench evaluates) and decoded results from a memo (as
    the prompts bench's sweep decodes) give every output bit for bit as computing them does: the first run fills
    both, the second is answered from them."""
    model = build_segmenter("tiny_tinyvit", preset="lora_cbo").eval()
    volume = torch.rand(3, 32, 32, 5, generator=torch.Generator().manual_seed(0))
    prompts = {1: {z: Prompt2D(box=[2, 3, 20, 25]) for z in (0, 1, 3, 4)}}  # with the key slice: all five
    key = ObjectPrompt([KeyBox(2, [2, 3, 20, 25])])
    lenient = PropagationConfig(min_iou=0.0, min_similarity=-1.0, max_growth=1e9, max_key_area=1e9, patience=1)

    def run(inferer: SliceWiseInferer, name: str | None) -> list[dict]:
        cache = SliceCache(name=name)
        return [inferer.predict(volume, prompts, cache=cache)[1], propagate(inferer, volume, key, lenient, cache)]

    expected = run(SliceWiseInferer(model), None)
    front, memo = feature_cache(), SliceCache(None)
    cached = SliceWiseInferer(model, front_cache=front, decode_memo=memo)
    assert 0 < cached.front_depth < len(encoder_stages(model.image_encoder))
    for _ in range(2):
        for want, got in zip(expected, run(cached, "volume"), strict=True):
            assert sorted(want) == sorted(got)
            for z in want:
                assert torch.equal(want[z].prob, got[z].prob) and torch.equal(want[z].low_res, got[z].low_res)
                assert want[z].iou == got[z].iou
    assert len(front) == 5 and front.hits >= 5 and memo.hits > 0
    assert set(front.stored.values()) == {1}

    # the memo is keyed by content: another tensor of the same values is a hit, other values are not
    [(_, embedding)] = cached.encode(volume, [3])
    box = [Prompt2D(box=[1, 1, 9, 9])]
    first = cached.decode(embedding, box, (32, 32))
    hits = memo.hits
    assert cached.decode(embedding.clone(), box, (32, 32))[0] is first[0] and memo.hits == hits + 1
    assert cached.decode(embedding + 1, box, (32, 32))[0] is not first[0]
    assert cached.decode(embedding, [Prompt2D(box=[1, 1, 9, 9], walk=True)], (32, 32))[0] is not first[0]


def test_the_inferer_hands_a_walks_flag_to_a_model_with_a_walk_prompt():
    """``Prompt2D.walk`` reaches the segmenter's walk prompt: with a trained offset a walk's box decodes
    differently from the same box drawn by the user, in the same call as other prompts."""
    model = build_segmenter("tiny", preset="adapter", walk_prompt=True).eval()
    with torch.no_grad():
        model.walk_prompt.offset.normal_()
    inferer = SliceWiseInferer(model)
    [(_, embedding)] = inferer.encode(torch.rand(3, 32, 32, 1), [0])
    drawn, walked = Prompt2D(box=[2, 2, 20, 24]), Prompt2D(box=[2, 2, 20, 24], walk=True)
    both = inferer.decode(embedding, [drawn, walked], (32, 32))
    assert torch.allclose(both[0].prob, inferer.decode(embedding, [drawn], (32, 32))[0].prob, atol=1e-6)
    assert torch.allclose(both[1].prob, inferer.decode(embedding, [walked], (32, 32))[0].prob, atol=1e-6)
    assert not torch.allclose(both[0].prob, both[1].prob)


def test_mixed_prompt_kinds_on_one_slice(tiny):
    volume = torch.rand(3, 32, 32, 2)
    prompts = {
        1: {0: Prompt2D(box=[1, 1, 20, 20])},
        2: {0: Prompt2D(points=[[5, 5], [20, 20]], point_labels=[1, 0])},
        3: {0: Prompt2D(points=[[9, 9]])},
        4: {0: Prompt2D(box=[3, 3, 9, 9], points=[[5, 5]])},
    }
    results = tiny.predict(volume, prompts)
    alone = tiny.predict(volume, {2: prompts[2]})
    torch.testing.assert_close(results[2][0].prob, alone[2][0].prob, atol=1e-5, rtol=1e-5)
    assert all(results[c][0].prob.shape == (32, 32) for c in prompts)


def test_overlaps_go_to_the_most_probable_class(tiny):
    from monai_cbo.inferers import SliceResult

    low = torch.zeros(64, 64)
    a = torch.tensor([[0.9, 0.6], [0.2, 0.0]])
    b = torch.tensor([[0.7, 0.8], [0.6, 0.1]])
    results = {1: {0: SliceResult(a, 1.0, low)}, 2: {0: SliceResult(b, 1.0, low)}}
    labels = tiny.label_map(results, (2, 2, 1))
    np.testing.assert_array_equal(labels[..., 0], [[1, 2], [2, 0]])


def test_bad_prompts_are_refused(tiny):
    with pytest.raises(ValueError, match="inverted"):
        Prompt2D(box=[10, 10, 5, 20])
    with pytest.raises(ValueError, match="needs a box, points or a mask"):
        Prompt2D()
    with pytest.raises(ValueError, match="slice 9 outside the volume's 0..3"):
        tiny.predict(torch.rand(3, 16, 16, 4), {1: {9: Prompt2D(box=[0, 0, 4, 4])}})


def _case(image_rel: str, label_rel: str, cls: int | None = None):
    image = load_volume(shared_data(image_rel))
    volume, geometry = prepare_volume(image, Preprocess())
    label = geometry.to_sliced(np.rint(load_volume(shared_data(label_rel))[0].numpy()).astype(int))
    if cls is not None:
        label = (label == cls).astype(int)
    return volume, label


@pytest.fixture(scope="module")
def litemedsam() -> SliceWiseInferer:
    return SliceWiseInferer(build_model("litemedsam"))


@pytest.mark.slow
def test_zero_shot_litemedsam_with_slice_boxes_on_hippocampus(litemedsam):
    dices = []
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):
        volume, label = _case(*(f"Task04_Hippocampus/{d}/{case}.nii.gz" for d in ("imagesTr", "labelsTr")))
        labels = litemedsam.label_map(litemedsam.predict(volume, prompts_from_label(label)), label.shape)
        dices += [dice_3d(labels == c, label == c) for c in (1, 2)]
    assert np.mean(dices) >= 0.7, dices


@pytest.mark.slow
def test_propagation_from_one_key_slice_nearly_matches_per_slice_boxes(litemedsam):
    volume, label = _case(
        "TotalSegmentator_examples/example_ct.nii.gz",
        "TotalSegmentator_examples/example_seg_fast_force_split.nii.gz",
        cls=1,
    )
    cache: dict = {}
    per_slice = litemedsam.label_map(litemedsam.predict(volume, prompts_from_label(label), cache=cache), label.shape)
    reference = dice_3d(per_slice == 1, label == 1)
    key = int(np.argmax(label.sum(axis=(0, 1))))
    key_box = KeyBox(key, prompts_from_label(label)[1][key].box)
    propagated = litemedsam.label_map(
        {1: propagate(litemedsam, volume, ObjectPrompt([key_box]), cache=cache)}, label.shape
    )
    dice = dice_3d(propagated == 1, label == 1)
    assert reference >= 0.8 and dice >= 0.8 * reference, (dice, reference)
