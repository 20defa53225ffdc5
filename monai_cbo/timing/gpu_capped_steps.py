"""The steps of ``monai-cbo gpu-check`` that run as a subprocess under a time cap (:func:`_run_capped`, which
stops the whole process group): ``tests``, the CUDA-marked tests with their JUnit summary (:func:`run_tests`),
and ``bench``, a resumable ``monai-cbo bench`` summarised and packed as ``bench.tar.gz`` (:func:`run_bench_step`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .gpu_config import REPO, GpuCheck

__all__ = ["run_bench_step", "run_tests"]


def _run_capped(
    cmd: list[str], log_path: Path, timeout: float, env: dict | None = None, dry_run: bool = False
) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group, output to ``log_path``; on ``timeout`` stop the whole group
    (SIGTERM, then SIGKILL after 15 s). Returns (exit code or None if stopped, seconds). A dry run's child uses
    one thread: the tiny model's small ops on a busy CPU run 100x slower with two threads spinning."""
    env = dict(os.environ if env is None else env)
    if dry_run:
        env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    with log_path.open("w", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = None
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out.write(f"\n[gpu-check] stopped at its time cap of {timeout:.0f} s\n")
    return code, time.monotonic() - start


# ---- step 1: the CUDA tests --------------------------------------------------------------------------------------


def _junit(path: Path) -> dict:
    """Counts, failures and recorded properties from a pytest JUnit file."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures, properties, skip_reasons = [], {}, set()
    if not path.is_file():
        return {"counts": counts, "failures": ["no JUnit file: pytest did not finish"]}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            counts["failed" if "failure" in kinds else "errors"] += 1
            child = case.find("failure") if "failure" in kinds else case.find("error")
            message = (child.get("message") or "") if child is not None else ""
            failures.append(f"{name}: {message.splitlines()[0][:300] if message else ''}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skip_reasons.add((case.find("skipped").get("message") or "")[:200])
        else:
            counts["passed"] += 1
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props:
            properties[name] = props
    return {"counts": counts, "failures": failures, "properties": properties, "skip_reasons": sorted(skip_reasons)}


def run_tests(check: GpuCheck, timeout: float, log: Callable[[str], None]) -> dict:
    """``pytest -m cuda`` in a subprocess; JUnit and log into ``out_dir``."""
    if not (REPO / "tests").is_dir():
        return {"status": "skipped", "reason": f"no tests/ folder beside {REPO / 'monai_cbo'}: run from a checkout"}
    xml = check.out_dir / "cuda_tests.xml"
    target = "tests/test_cuda.py" if check.dry_run else "tests"  # the dry run skips collecting the whole suite
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        target,
    ]
    env = dict(os.environ)
    if check.data.is_dir():
        env.setdefault("MONAI_CBO_SHARED_DATA", str(check.data.resolve()))  # tests/realdata.py looks there
    log(f"tests: {' '.join(cmd[2:])} (cap {timeout:.0f} s)")
    code, seconds = _run_capped(cmd, check.out_dir / "cuda_tests.log", timeout, env, check.dry_run)
    found = _junit(xml)
    counts = found["counts"]
    if code is None:
        status = "timed out"
    elif code in (0, 5) and not counts["failed"] and not counts["errors"]:
        status = "passed" if counts["passed"] else "skipped"
    else:
        status = "failed"
    log(f"tests: {status} in {seconds:.0f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for failure in found["failures"]:
        log(f"  FAILED {failure}")
    return {"status": status, "seconds": round(seconds, 1), "exit_code": code, "command": " ".join(cmd), **found}


# ---- step 3: the bench -------------------------------------------------------------------------------------------


def _dry_data(root: Path) -> tuple[Path, Path]:
    """Two synthetic 2-class cases (one to train, one to test) and their datalist, for the dry run."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        image = rng.normal(size=(24, 20, 6)).astype(np.float32)
        label = np.zeros((24, 20, 6), dtype=np.uint8)
        label[5:15, 4:12, 1:5], label[16:20, 14:18, 2:4] = 1, 2
        image[label > 0] += 3.0
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0])), root / sub / f"dry_{i}.nii.gz")
        cases.append({"image": f"imagesTr/dry_{i}.nii.gz", "label": f"labelsTr/dry_{i}.nii.gz"})
    datalist = root / "datalist.json"
    datalist.write_text(
        json.dumps({"labels": {"0": "background", "1": "one", "2": "two"}, "training": cases[:1], "test": cases[1:]}),
        encoding="utf-8",
    )
    return datalist, root


def _relocate(bench_dir: Path, datalist: Path, dataset_dir: Path) -> None:
    """A carried bench folder records the absolute paths of the machine that started it: point them at this copy
    of the same data, so that the bench resumes instead of refusing a different datalist."""
    path = bench_dir / "bench.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("datalist") and not Path(saved["datalist"]).exists() and Path(saved["datalist"]).name == datalist.name:
        saved.update(datalist=str(datalist.resolve()), dataset_dir=str(dataset_dir.resolve()))
        path.write_text(json.dumps(saved, indent=2), encoding="utf-8")


def _bench_summary(bench_dir: Path) -> list[dict]:
    from ..bench.runner import collect_results
    from ..metrics import MetricsTable

    runs = []
    for r in collect_results(bench_dir):
        csv = Path(r["dir"]) / "metrics.csv"
        dice = {row["class"]: round(float(row["dice_mean"]), 4) for row in MetricsTable.read_csv(csv).summary()}
        train = r.get("train", {})
        rate = round(train["slices"] / train["seconds"], 1) if train.get("seconds") else None
        runs.append(
            {
                "preset": r["preset"],
                "seed": r["seed"],
                "device": r.get("device"),
                "amp": r.get("amp"),
                "train_seconds": round(train.get("seconds", 0.0), 1),
                "train_slices_per_s": rate,
                "eval_cases": r.get("eval", {}).get("cases"),
                "eval_seconds": round(r.get("eval", {}).get("seconds", 0.0), 1),
                "dice": dice,
            }
        )
    return runs


def _pack(bench_dir: Path, target: Path) -> int:
    """``bench_dir`` as a .tar.gz without the adapters (``adapter.pt``, the decoder's 16 MB each); returns bytes."""
    with tarfile.open(target, "w:gz") as tar:
        tar.add(bench_dir, arcname="bench", filter=lambda info: None if info.name.endswith(".pt") else info)
    return target.stat().st_size


def run_bench_step(
    check: GpuCheck, device: torch.device, timeout: float, log: Callable[[str], None], scratch: Path
) -> dict:
    """``monai-cbo bench`` in a subprocess, stopped at ``timeout`` (the next call resumes it), then summarised."""
    if check.dry_run:
        datalist, dataset_dir = _dry_data(scratch / "data")
        bench_dir = check.bench_dir or scratch / "bench"
        presets, seeds = "lora_cbo", "0"
        budget = ["--model", "tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    else:
        datalist, dataset_dir = check.data / "hippocampus.json", check.data / "Task04_Hippocampus"
        bench_dir = check.bench_dir or check.data / "bench"
        presets, seeds = check.bench_presets, check.bench_seeds
        budget = ["--steps", str(check.bench_steps), "--batch-size", str(check.bench_batch)]
        budget += ["--learning-rate", str(check.bench_lr)]
        if not datalist.is_file() or not dataset_dir.is_dir():
            log(
                f"bench: skipped: {datalist} or {dataset_dir} is missing (run benchmarks/prepare_gpu_carry.sh and "
                "carry .gpudata)"
            )
            return {"status": "skipped", "reason": f"{datalist} or {dataset_dir} missing"}
    _relocate(bench_dir, datalist, dataset_dir)
    cmd = [
        sys.executable,
        "-m",
        "monai_cbo.cli",
        "bench",
        str(datalist.resolve()),
        "-o",
        str(bench_dir),
        "--dataset-dir",
        str(dataset_dir.resolve()),
        "--modality",
        "mri",
        "--presets",
        presets,
        "--seeds",
        seeds,
        *budget,
    ]
    log(f"bench: {' '.join(cmd[3:])} (cap {timeout:.0f} s)")
    code, seconds = _run_capped(cmd, check.out_dir / "bench.log", timeout, dry_run=check.dry_run)
    runs = _bench_summary(bench_dir) if bench_dir.is_dir() else []
    total = len(presets.split(",")) * len(seeds.split(","))
    status = {None: "capped", 0: "done"}.get(code, "failed")
    log(
        f"bench: {status} in {seconds:.0f} s: {len(runs)} of {total} runs done"
        + ("; call again with the bench folder carried to continue" if status == "capped" else "")
    )
    packed = _pack(bench_dir, check.out_dir / "bench.tar.gz") if bench_dir.is_dir() else 0
    return {
        "status": status,
        "seconds": round(seconds, 1),
        "exit_code": code,
        "command": " ".join(cmd),
        "bench_dir": str(bench_dir),
        "runs_done": len(runs),
        "runs_total": total,
        "runs": runs,
        "tarball_bytes": packed,
    }
