"""A process killed (SIGKILL) in the middle of a save leaves the previous file whole, and nothing half-written
is ever read back: the training state (resume), the best adapter, and a written label map.

A subprocess saves a first version, then starts a second save whose writer (``torch.save`` / ``nibabel.save``,
patched) writes half of the real bytes into the file it was given, says so through a marker file and waits
to be killed. The test kills it there and checks: the final path holds the first version byte for byte and
loads; the half-written temporary sits beside it under a hidden name and is never what is loaded (the resume
restores the first state, a folder of masks lists only the whole one); and a later save still succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_cbo.handlers import TrainingStateCheckpoint
from monai_cbo.inferers import KeyPrompt, find_cases, load_volume, save_label_map
from monai_cbo.models import load_segmenter
from monai_cbo.networks import build_model
from monai_cbo.peft import PeftConfig, apply_peft, read_adapter
from monai_cbo.utils import load_weights_only

REPO = Path(__file__).resolve().parents[1]
FINAL = {"training_state": "training_state.pt", "best_adapter": "best_adapter.pt", "label_map": "case_seg.nii.gz"}

SCRIPT = """
import os, shutil, sys, time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine

kind, out, scratch = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
final = out / sys.argv[4]


def stall(real):
    # the real writer into a scratch file, then half of its bytes into the given file; wait there to be killed
    def write(obj, path, *args, **kwargs):
        full = scratch / ("full_" + Path(path).name.lstrip("."))  # same suffixes: nibabel reads the format there
        real(obj, full, *args, **kwargs)
        data = full.read_bytes()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        (scratch / "inside_save").write_text(f"{path}\\n{len(data)}", encoding="utf-8")
        time.sleep(600)

    return write


def fill(model, value):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(value)


if kind == "label_map":
    from monai_cbo.inferers import load_volume, save_label_map

    image = load_volume(scratch / "image.nii.gz")
    save = lambda value, overwrite: save_label_map(np.full(image.shape[1:], value, np.uint8), image, final, overwrite)
else:
    from monai_cbo.handlers import BestAdapterSaver, TrainingStateCheckpoint
    from monai_cbo.networks import build_model
    from monai_cbo.peft import PeftConfig, apply_peft

    model = apply_peft(build_model("tiny", seed=0), PeftConfig.from_preset("lora"))
    engine = Engine(lambda engine, batch: None)
    if kind == "training_state":
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        handler = TrainingStateCheckpoint(final, model, optimizer)
    else:
        handler = BestAdapterSaver(final, model, "dice")

    def save(value, overwrite):
        fill(model, value)
        engine.state.epoch, engine.state.iteration, engine.state.metrics = value, 10 * value, {"dice": value / 10}
        (handler.save if kind == "training_state" else handler)(engine)

save(1, False)
shutil.copyfile(final, scratch / "first_version")
torch.save = stall(torch.save)
nib.save = stall(nib.save)
save(2, True)
raise SystemExit("the second save returned instead of stalling")
"""


def _kill_inside_save(kind: str, tmp_path: Path) -> tuple[Path, Path, int]:
    """Run SCRIPT for ``kind``; SIGKILL it inside its second save. Returns (final path, temporary, full size)."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir(exist_ok=True)
    marker, log = scratch / "inside_save", scratch / "log.txt"
    cmd = [sys.executable, "-c", SCRIPT, kind, str(out), str(scratch), FINAL[kind]]
    with open(log, "w", encoding="utf-8") as stream:
        process = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=stream, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            alive = process.poll() is None
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
    output = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    assert alive and marker.exists(), f"the subprocess never reached the stalled save:\n{output}"
    assert process.returncode == -signal.SIGKILL
    temporary, size = marker.read_text(encoding="utf-8").splitlines()
    return out / FINAL[kind], Path(temporary), int(size)


def _check_files(final: Path, temporary: Path, full_size: int, scratch: Path) -> None:
    assert final.read_bytes() == (scratch / "first_version").read_bytes()  # not the second version, not half of it
    # the kill hit the second save for real: its half-written temporary is there, beside the final path, hidden
    assert temporary.parent == final.parent and temporary.name.startswith(".") and temporary != final
    assert temporary.stat().st_size == full_size // 2
    assert sorted(p.name for p in final.parent.iterdir()) == sorted([final.name, temporary.name])


def _tiny_lora() -> torch.nn.Module:
    return apply_peft(build_model("tiny", seed=0), PeftConfig.from_preset("lora"))


def _trained_values(model: torch.nn.Module) -> set[float]:
    return {v for p in model.parameters() if p.requires_grad for v in p.detach().unique().tolist()}


def test_training_state_killed_mid_save_resumes_from_the_previous_one(tmp_path):
    final, temporary, size = _kill_inside_save("training_state", tmp_path)
    _check_files(final, temporary, size, tmp_path / "scratch")
    with pytest.raises(ValueError, match="truncated"):  # what a resume from the temporary would have met
        load_weights_only(temporary, "training state", "delete it")

    model, engine = _tiny_lora(), Engine(lambda engine, batch: None)
    engine.state.max_epochs = 5
    handler = TrainingStateCheckpoint(final, model, resume=True)
    handler.load(engine)
    assert (engine.state.epoch, engine.state.iteration) == (1, 10)
    assert _trained_values(model) == {1.0}

    engine.state.epoch = 3  # the run goes on: the next save replaces the file, the leftover in the way or not
    handler.save(engine)
    assert torch.load(final, weights_only=True)["trainer"]["epoch"] == 3


def test_best_adapter_killed_mid_save_keeps_the_previous_best(tmp_path):
    final, temporary, size = _kill_inside_save("best_adapter", tmp_path)
    _check_files(final, temporary, size, tmp_path / "scratch")
    assert read_adapter(final)["metadata"] == {"epoch": 1, "dice": 0.1}
    assert _trained_values(load_segmenter(final)) == {1.0}
    with pytest.raises(ValueError, match="truncated"):
        read_adapter(temporary)


def test_label_map_killed_mid_save_keeps_the_previous_mask(tmp_path):
    (tmp_path / "scratch").mkdir()
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    image = np.random.default_rng(0).integers(0, 1000, (64, 64, 16)).astype(np.int16)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scratch" / "image.nii.gz")
    final, temporary, size = _kill_inside_save("label_map", tmp_path)
    _check_files(final, temporary, size, tmp_path / "scratch")
    mask = load_volume(final)
    assert mask.shape == (1, 64, 64, 16) and set(np.unique(mask.numpy()).tolist()) == {1}
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_volume(temporary)
    key = KeyPrompt(box=(0, 0, 0, 9, 9, 0))
    assert [c.image for c in find_cases(final.parent, key=key)] == [final]  # a folder of masks skips the temporary

    save_label_map(np.full((64, 64, 16), 3, np.uint8), mask, final, overwrite=True)
    assert set(np.unique(load_volume(final).numpy()).tolist()) == {3}


def test_atomic_outputs_get_the_usual_permissions_not_owner_only(tmp_path):
    """mkstemp creates 0600 files; a mask or report shared with colleagues must follow the umask instead."""
    import os

    from monai_cbo.utils import write_atomic

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "mask.nii.gz", lambda p: p.write_bytes(b"x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
