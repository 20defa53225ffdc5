"""``monai-cbo speed --precision-check``: fp32 against bf16, interleaved, each with its output difference."""

from __future__ import annotations

import json

import pytest

from monai_cbo.timing.precision_check import precision_check
from monai_cbo.utils import cpu_native_bf16


@pytest.mark.filterwarnings("ignore:--precision bf16")
def test_precision_check_times_both_formats_and_sees_their_difference():
    result = precision_check("tiny", repeats=1, batch=1)
    assert result["native_bf16"] == cpu_native_bf16() and result["machine"]["cpu_cores"] >= 1
    for name in ("encoder", "decoder", "train_step"):
        figures = result[name]
        assert figures["before_s"] > 0 and figures["after_s"] > 0 and figures["speedup"] > 0
        assert 0 < figures["max_abs_diff"] < 1.0, (name, figures)  # bf16 ran (not bitwise fp32), and is close


def test_speed_says_which_number_format_its_training_steps_ran_in(capsys):
    from monai_cbo.cli import main
    from monai_cbo.precision import resolve_precision

    args = ["speed", "--model", "tiny", "--presets", "lora", "--steps", "1", "--skip-encoder", "--device", "cpu"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_step"]["lora"]["precision"] == resolve_precision("auto", "cpu", training=True).label
    assert result["train_step"]["lora"]["median_s"] > 0
