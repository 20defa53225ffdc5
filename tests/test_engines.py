from __future__ import annotations

import pytest

from monai_cbo.engines import build_optimizer
from monai_cbo.models import build_segmenter


def test_optimizer_groups_and_a_preset_with_nothing_to_train():
    opt = build_optimizer(build_segmenter("tiny", preset="lora_cbo"), lr=1e-3, name="adam")
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-3), pytest.approx(1e-1)]
    with pytest.raises(ValueError, match="preset 'freeze' trains no parameters"):
        build_optimizer(build_segmenter("tiny", preset="freeze"), lr=1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(build_segmenter("tiny", preset="lora"), lr=1e-3, name="lion")
