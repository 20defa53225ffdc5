"""The GPU check's CPU dry run end to end: every step runs, the files a lent machine would send back are written."""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from monai_cbo.cli import main
from monai_cbo.timing.gpu_capped_steps import _run_capped
from monai_cbo.timing.gpu_check import GpuCheck

RETURNED = {
    "gpu_check.json",
    "gpu_check.md",
    "gpu_check.log",
    "cuda_tests.log",
    "cuda_tests.xml",
    "bench.log",
    "bench.tar.gz",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu-check runs for real (minutes)")
def test_dry_run_without_cuda_runs_every_step_and_writes_the_returned_files(tmp_path, capsys):
    out, bench = tmp_path / "out", tmp_path / "bench"
    assert main(["gpu-check", str(out), "--bench-dir", str(bench)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("gpu-check: no CUDA device here: dry run")
    # what a lent machine sends back: at most 8 plain files, no folder
    assert {p.name for p in out.iterdir()} == RETURNED and all(p.is_file() for p in out.iterdir())
    result = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert result["mode"] == "dry-run"
    steps = result["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {"tests": "skipped", "throughput": "done", "bench": "done"}
    assert steps["tests"]["counts"]["skipped"] > 0 and not steps["tests"]["failures"]
    assert "needs a CUDA GPU" in steps["tests"]["skip_reasons"][0]
    rows = steps["throughput"]["rows"]
    assert {(r["dtype"], r["mode"], r["batch"]) for r in rows} == {
        (d, m, b) for d in ("bf16", "fp16") for m in ("train", "infer") for b in (1, 2)
    }
    assert all(
        r["model"] == "tiny" and r["slices_per_s"] > 0 and r["flops_per_slice"] > 0 and 0 < r["fraction_of_floor"]
        for r in rows
    )
    train = next(r for r in rows if r["mode"] == "train")
    infer = next(r for r in rows if r["mode"] == "infer")
    # backward counted: activation gradients only (frozen weights get none), so less than twice the forward
    assert 1.5 * infer["flops_per_slice"] < train["flops_per_slice"] < 3 * infer["flops_per_slice"]
    assert steps["bench"]["runs_done"] == steps["bench"]["runs_total"] == 1
    assert set(steps["bench"]["runs"][0]["dice"]) == {"one", "two"}
    with tarfile.open(out / "bench.tar.gz") as tar:
        names = tar.getnames()
    assert "bench/runs/lora_cbo/seed0/result.json" in names and not [n for n in names if n.endswith(".pt")]
    summary = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert "dry run on the CPU" in summary and "| tiny | train | bf16 | 1 |" in summary
    # a second call continues the bench instead of redoing it
    assert main(["gpu-check", str(out), "--bench-dir", str(bench), "--steps", "bench"]) == 0
    assert "(1 done, 0 to do)" in (out / "bench.log").read_text(encoding="utf-8")


def test_unknown_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['benchmark'\]; choose from tests, throughput, bench"):
        GpuCheck(tmp_path, steps=("benchmark",))


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\tZ" not in next(
        x for x in status.read_text(encoding="utf-8").splitlines() if x.startswith("State")
    )


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see whether the child process is gone")
def test_a_step_past_its_cap_is_stopped_with_its_children(tmp_path):
    # the bench is stopped this way when the call's time runs out; its child processes must not outlive it
    program = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('child', child.pid, flush=True); time.sleep(60)"
    )
    start = time.monotonic()
    code, seconds = _run_capped([sys.executable, "-c", program], tmp_path / "log", timeout=3)
    assert code is None and seconds < 20 and time.monotonic() - start < 20
    log = (tmp_path / "log").read_text(encoding="utf-8")
    assert "stopped at its time cap of 3 s" in log
    child = int(next(line for line in log.splitlines() if line.startswith("child ")).split()[1])
    time.sleep(0.5)
    assert not _alive(child)
