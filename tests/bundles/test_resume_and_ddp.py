"""The spleen bundle resumes an interrupted run, trains with 2 processes (gloo on the CPU), and repeats exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from bundle_runs import REPO, bundle_command, run_bundle

from monai_cbo.peft import read_adapter

CONFIGS = REPO / "bundles" / "spleen_ct_cbo" / "configs"


def _options(out: Path, data: Path) -> list[str]:
    return [
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--model#name",
        "tiny",
        "--slices_per_volume",
        "2",
        "--val_interval",
        "1",
    ]


def _bundle(args: list[str], out: Path, data: Path, launcher: list[str] | None = None) -> str:
    # 2 processes x 2 threads on 2 cores would spin against each other
    return run_bundle(args, _options(out, data), launcher, env={"OMP_NUM_THREADS": "1"})


def _state(out: Path) -> dict:
    return torch.load(out / "models" / "training_state.pt", weights_only=True)


def test_the_default_run_id_trains_too(demo_data, tmp_path):  # the other tests use "training"
    _bundle(["--config_file", str(CONFIGS / "train.json"), "--max_epochs", "1"], tmp_path / "run", demo_data)
    assert _state(tmp_path / "run")["trainer"]["epoch"] == 1
    # the recipe simulates clicks by default: the adapter file says so, for inference to give it points
    assert read_adapter(tmp_path / "run" / "models" / "best_adapter.pt")["interaction"]["share"] > 0
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_a_stopped_run_resumes_where_it_stopped(demo_data, tmp_path):
    train = ["training", "--config_file", str(CONFIGS / "train.json")]
    _bundle([*train, "--max_epochs", "2"], tmp_path / "whole", demo_data)
    _bundle([*train, "--max_epochs", "1"], tmp_path / "split", demo_data)  # stopped after its first epoch
    first = _state(tmp_path / "split")
    log = _bundle([*train, "--max_epochs", "2", "--resume", "true"], tmp_path / "split", demo_data)
    assert "resumed from" in log and "at epoch 1" in log
    whole, resumed = _state(tmp_path / "whole"), _state(tmp_path / "split")
    assert resumed["trainer"]["epoch"] == whole["trainer"]["epoch"] == 2
    assert resumed["trainer"]["iteration"] == whole["trainer"]["iteration"] == 2 * first["trainer"]["iteration"]
    assert resumed["lr_scheduler"]["last_epoch"] == whole["lr_scheduler"]["last_epoch"] == 2
    assert resumed["optimizer"]["state"]  # Adam moments carried on, not restarted


def test_two_process_gloo_run_completes_and_only_rank_0_saves(demo_data, tmp_path):
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    log = _bundle(["training", "--config_file", configs, "--max_epochs", "1"], tmp_path / "ddp", demo_data, launcher)
    assert log.count("saved best adapter") == 1  # both ranks validate; rank 0 alone writes
    assert _state(tmp_path / "ddp")["trainer"]["epoch"] == 1
    assert (tmp_path / "ddp" / "models" / "best_adapter.pt").is_file()


def test_ddp_trains_past_its_first_iteration(demo_data, tmp_path):
    # the mask decoder's IoU head is trainable but not in the loss: DDP must not wait for its gradients
    # (it did, and failed at the second iteration, before find_unused_parameters)
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    _bundle(
        ["training", "--config_file", configs, "--max_epochs", "1", "--batch_size", "1"],
        tmp_path / "ddp",
        demo_data,
        launcher,
    )
    assert _state(tmp_path / "ddp")["trainer"]["iteration"] == 2  # 2 training volumes, one per iteration


def test_same_seed_gives_bitwise_identical_weights_on_the_cpu(demo_data, tmp_path):
    train = ["training", "--config_file", str(CONFIGS / "train.json"), "--max_epochs", "1"]
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _bundle([*train, "--seed", seed], tmp_path / run, demo_data)
    a, b, c = (_state(tmp_path / run)["network"] for run in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed does reach sampling and initialisation


def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(demo_data, tmp_path):
    out = tmp_path / "killed"
    train = ["training", "--config_file", str(CONFIGS / "train.json"), "--max_epochs", "4"]
    cmd = bundle_command(train, _options(out, demo_data))
    state = out / "models" / "training_state.pt"
    process = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # no chance to clean up, possibly in the middle of a save
    finally:
        process.wait()
    saved = _state(out)["trainer"]  # the file on disk is complete, whatever the kill interrupted
    assert 1 <= saved["epoch"] <= 4
    log = _bundle([*train, "--resume", "true"], out, demo_data)
    assert f"resumed from {out / 'models' / 'training_state.pt'} at epoch {saved['epoch']}" in log
    final = _state(out)["trainer"]
    assert final["epoch"] == 4 and final["iteration"] == 4 * (saved["iteration"] // saved["epoch"])
