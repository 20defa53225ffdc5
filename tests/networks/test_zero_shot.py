"""LiteMedSAM's packaged weights segment real slices zero-shot from a ground-truth box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from realdata import shared_data

from monai_cbo.inferers import Preprocess, load_volume, prepare_volume
from monai_cbo.metrics import dice_3d
from monai_cbo.networks import build_model
from monai_cbo.transforms import ResizeLongestSidePad, restore_slice, scale_coords
from monai_cbo.transforms.prompts import BoxFromMask

CASES = {
    "hippocampus": (
        "Task04_Hippocampus/imagesTr/hippocampus_003.nii.gz",
        "Task04_Hippocampus/labelsTr/hippocampus_003.nii.gz",
        None,
    ),
    "spleen": ("TotalSegmentator_examples/example_ct_sm.nii.gz", "TotalSegmentator_examples/example_seg.nii.gz", 1),
}


@pytest.fixture(scope="module")
def litemedsam():
    return build_model("litemedsam")


@pytest.mark.parametrize("name", list(CASES))
def test_litemedsam_segments_a_real_slice_from_its_box(litemedsam, name):
    image_rel, label_rel, cls = CASES[name]
    image = load_volume(shared_data(image_rel))
    volume, geometry = prepare_volume(image, Preprocess())
    label = geometry.to_sliced(np.rint(load_volume(shared_data(label_rel))[0].numpy()).astype(int))
    mask = label > 0 if cls is None else label == cls
    z = int(np.argmax(mask.sum(axis=(0, 1))))  # the slice where the structure is largest
    gt = mask[..., z]
    size = gt.shape
    x = ResizeLongestSidePad(litemedsam.img_size)(volume[..., z])[None]
    box = torch.as_tensor(scale_coords(BoxFromMask()(gt[None].astype(np.uint8)), size, litemedsam.img_size))[None]
    with torch.inference_mode():
        logits = litemedsam(x, boxes=box).masks[0, 0]
    pred = restore_slice(torch.sigmoid(logits), size)[0] > 0.5
    assert dice_3d(pred.numpy(), gt) >= 0.7
