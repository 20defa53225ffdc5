"""Shared test fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from monai_cbo import precision
from monai_cbo.networks.runtime import CACHE_ENV, RUNTIME_ENV
from monai_cbo.utils import keep_freed_memory

keep_freed_memory()  # as the command line does: LiteMedSAM runs ~1.6x faster on the CPU
# segment's encoder runtime: auto is openvino where it is installed (the dev extra installs it). The tests run the
# model's own encoder on every install, commands in subprocesses too (the environment is inherited), so that
# their figures do not depend on the extras; the openvino runtime and auto's choice have their own tests
# (tests/networks/test_runtime.py)
os.environ[RUNTIME_ENV] = "torch"
# and a model converted for openvino by a test goes to a folder of this run, never the user's ~/.cache
os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="monai_cbo_test_cache_")
atexit.register(shutil.rmtree, os.environ[CACHE_ENV], ignore_errors=True)

#: the library's precision policies as shipped, before the session fixture below pins them
SHIPPED_PRECISION = {name: getattr(precision, name) for name in ("CPU_AUTO_BF16", "CPU_AUTO_BF16_TRAINING")}


@pytest.fixture(autouse=True, scope="session")
def _fp32_training_on_every_cpu():
    """In this process, training's ``auto`` runs fp32 on every CPU, so that a test trains the same whether or not
    its CPU has native bf16 (its thresholds were set in fp32). The default's bf16 training on such a CPU is tested
    with native bf16 simulated (tests/test_precision.py); commands run as subprocesses keep the real default."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "CPU_AUTO_BF16_TRAINING", False)
        yield


@pytest.fixture
def shipped_precision() -> dict:
    return dict(SHIPPED_PRECISION)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """Four synthetic spleen CT cases (data_prep/make_demo_data.py): 2 training, 2 validation, so that each of 2
    ranks gets one of each."""
    data = tmp_path_factory.mktemp("demo") / "data"
    script = ["data_prep/make_demo_data.py", str(data), "-o", str(data / "datalist.json"), "-n", "4"]
    options = ["--seed", "1", "--val-fraction", "0.5", "--test-fraction", "0"]
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, *script, *options], cwd=repo, check=True, capture_output=True)
    return data
