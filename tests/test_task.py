"""The task spec: classes, nested regions and their written values, checked where they are given."""

from __future__ import annotations

import pytest
import torch

from monai_cbo.inferers import AutoConfig, Preprocess
from monai_cbo.task import TaskSpec
from monai_cbo.transforms import BratsRegionsd, ClassChannelsd, CTWindowd, MRIPercentileScaled


def test_exclusive_classes_default_to_one_two_and_are_written_with_their_values():
    task = TaskSpec(class_names=["anterior", "posterior"])
    assert task.classes == (1, 2) and task.label_values == (1, 2) and task.exclusive
    organs = TaskSpec(class_names=["spleen", "liver"], classes=[1, 5])
    assert organs.label_values == (1, 5) and organs.sampled_labels == [1, 5]
    channels = organs.label_channels("label")
    assert isinstance(channels, ClassChannelsd)
    out = channels({"label": torch.tensor([[[0, 1, 5, 7]]])})["label"]  # 7: another organ, background here
    assert out.tolist() == [[[0, 1, 0, 0]], [[0, 0, 1, 0]]]


def test_nested_regions_take_their_convention_values_or_need_them():
    brats = TaskSpec(class_names=["WT", "TC", "ET"], regions="2023")
    assert not brats.exclusive and brats.label_values == (2, 1, 3) and brats.sampled_labels == [1, 2, 3]
    assert isinstance(brats.label_channels(), BratsRegionsd)
    msd = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    with pytest.raises(ValueError, match="needs label_values"):
        TaskSpec(class_names=["WT", "TC", "ET"], regions=msd)
    assert TaskSpec(class_names=["WT", "TC", "ET"], regions=msd, label_values=[1, 2, 3]).label_values == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown BraTS convention"):
        TaskSpec(class_names=["WT", "TC", "ET"], regions="2019")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": ["a", "a"]}, "each class once"),
        ({"class_names": ["a", "b"], "classes": [1]}, "differ in number"),
        ({"class_names": ["a"], "classes": [1], "regions": "2021"}, "not both"),
        ({"class_names": ["WT", "TC"], "regions": "2021"}, "differ in number"),
        ({"class_names": ["a", "b"], "label_values": [1, 0]}, "non-zero"),
    ],
)
def test_a_task_that_cannot_work_is_refused_with_what_to_set(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**kwargs)


def test_replace_derives_the_written_values_again_and_names_unknown_settings():
    task = TaskSpec(class_names=["WT", "TC", "ET"], regions="2015", auto=AutoConfig(z_smooth=0.5))
    later = task.replace(regions="2023")
    assert later.label_values == (2, 1, 3) and later.auto.z_smooth == 0.5
    organs = TaskSpec(class_names=["spleen"]).replace(classes=[4])
    assert organs.label_values == (4,)
    with pytest.raises(ValueError, match="unknown task settings \\['z_smooth'\\]"):
        task.replace(z_smooth=0.1)


def test_preprocess_gives_the_training_chain_of_its_modality():
    ct = Preprocess("ct", ct_window=(-100.0, 300.0), channels=[0]).load_transforms(["image", "label"])
    assert [type(t).__name__ for t in ct] == ["LoadImaged", "Orientationd", "CTWindowd", "ToModelChannelsd"]
    assert isinstance(ct[2], CTWindowd) and (ct[2].scaler.a_min, ct[2].scaler.a_max) == (-100.0, 300.0)
    mri = Preprocess("mri", mri_percentiles=(1.0, 99.0)).load_transforms()
    assert isinstance(mri[2], MRIPercentileScaled) and (mri[2].scaler.lower, mri[2].scaler.upper) == (1.0, 99.0)
    with pytest.raises(ValueError, match="'ct' or 'mri'"):
        Preprocess("auto").load_transforms()
    with pytest.raises(ValueError, match="axial"):
        Preprocess("ct", view="coronal").load_transforms()
