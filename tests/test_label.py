"""``monai-cbo label``: MONAI Label's real server with the monai_cbo app, real HTTP on the loopback address.

The server tests need the label extra (``pip install -e ".[label]" && pip install --no-deps monailabel==0.8.5``,
which ``.ci/run`` installs) and the shared hippocampus volumes; without either they skip with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_cbo.label import INSTALL, monailabel_problem

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
# held out from the shipped hippocampus adapter's training (its record's held_out_cases)
CASES = ("hippocampus_014", "hippocampus_038", "hippocampus_045")
ROI_014 = [6, 5, 27, 44, 5, 35]  # the label's bounding box: i0, j0, i1, j1, k0, k1 (slices k0 <= k < k1)

PROBLEM = monailabel_problem()
if PROBLEM is not None:
    SKIP = f"the label extra is not installed ({INSTALL})"
elif not SHARED.is_dir():
    SKIP = f"shared hippocampus volumes not found at {SHARED}"
else:
    SKIP = None


def test_server_refuses_to_start_without_monailabel(tmp_path, monkeypatch, capsys):
    """A message naming the install command, exit code 2, no traceback, and no server."""
    from monai_cbo.cli import main

    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), studies / "a.nii.gz")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monailabel" else real(name, *a))
    for key in ("MONAI_LABEL_APP_DIR", "MONAI_LABEL_STUDIES", "MONAI_LABEL_APP_CONF", "PYTHONPATH"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    for key in ("MONAI_LABEL_SERVER_PORT", "MONAI_LABEL_SESSIONS", "MONAI_LABEL_AUTO_UPDATE_SCORING"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    code = main(["label", "--studies", str(studies), "--work", str(tmp_path / "work"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "MONAI Label, which is not installed" in err and INSTALL in err and "Traceback" not in err


def test_server_refuses_a_missing_or_empty_studies_folder(tmp_path, capsys):
    from monai_cbo.cli import main

    assert main(["label", "--studies", str(tmp_path / "nope"), "--work", str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["label", "--studies", str(tmp_path / "empty"), "--work", str(tmp_path / "w")]) == 2
    assert "holds no volume" in capsys.readouterr().err
    assert main(["label", "--studies", str(tmp_path / "empty"), "--bundle", "no_such_bundle"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(folder: Path) -> dict[str, str]:
    """The studies folder's volumes (MONAI Label's own index, datastore_v2.json, changes as labels are saved)."""
    volumes = [p for p in sorted(folder.iterdir()) if p.name.endswith(".nii.gz")]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in volumes}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if SKIP:
        pytest.skip(SKIP)
    requests = pytest.importorskip("requests")
    root = tmp_path_factory.mktemp("label")
    studies = root / "studies"
    studies.mkdir()
    for case in CASES:
        shutil.copy(SHARED / "imagesTr" / f"{case}.nii.gz", studies)
    port = _free_port()
    log = open(root / "server.log", "w")
    cmd = [sys.executable, "-m", "monai_cbo.cli", "label", "--studies", str(studies), "--work", str(root / "work")]
    cmd += ["--port", str(port), "--bundle", "hippocampus_mri_cbo"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {(root / 'server.log').read_text(encoding='utf-8')[-3000:]}")
        time.sleep(1)
    yield {"url": url, "studies": studies, "root": root, "requests": requests, "digest": _digest(studies)}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _infer(server, model: str, image: str, params: dict, output: str = "image"):
    return server["requests"].post(
        f"{server['url']}/infer/{model}",
        params={"image": image, "output": output},
        files={"params": (None, json.dumps(params))},
        timeout=600,
    )


def _infer_all(server, model: str, image: str, params: dict, path: Path) -> tuple[dict, np.ndarray]:
    """The answer's params and its mask (MONAI Label's default multipart answer)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    response = _infer(server, model, image, params, output="all")
    assert response.status_code == 200, response.text
    parts = {}
    for part in MultipartDecoder(response.content, response.headers["content-type"]).parts:
        name = part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]
        parts[name] = part
    path.write_bytes(parts["image"].content)
    return json.loads(parts["params"].text), np.asarray(nib.load(path).dataobj)


def _mask(response, path: Path) -> nib.Nifti1Image:
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return nib.load(path)


def test_info_lists_the_prompted_automatic_and_train_tasks(server):
    info = server["requests"].get(f"{server['url']}/info/", timeout=30).json()
    assert info["models"]["monai_cbo_prompt"]["type"] == "deepgrow"
    assert info["models"]["monai_cbo_auto"]["type"] == "segmentation"
    assert info["models"]["monai_cbo_auto"]["labels"] == {"anterior": 1, "posterior": 2}
    assert "monai_cbo_train" in info["trainers"]
    assert info["datastore"]["total"] == len(CASES)


def test_prompted_infer_matches_monai_cbo_segment(server, tmp_path):
    """The ROI box a viewer sends gives the mask ``monai-cbo segment --key-box`` gives (same box, same model),
    in the volume's geometry."""
    from monai_cbo.cli import main

    image = server["studies"] / "hippocampus_014.nii.gz"
    served = _mask(_infer(server, "monai_cbo_prompt", "hippocampus_014", {"roi": ROI_014}), tmp_path / "served.nii.gz")
    reference = nib.load(image)
    assert served.shape == reference.shape and np.allclose(served.affine, reference.affine)
    i0, j0, i1, j1, k0, k1 = ROI_014
    box = f"{i0},{j0},{k0},{i1},{j1},{k1 - 1}"
    out = tmp_path / "cli"
    assert main(["segment", str(image), "-o", str(out), "--bundle", "hippocampus_mri_cbo", "--key-box", box]) == 0
    cli = np.asarray(nib.load(out / "hippocampus_014_seg.nii.gz").dataobj) > 0
    mask = np.asarray(served.dataobj) > 0
    assert mask.sum() > 100
    assert _dice(mask, cli) >= 0.8
    label = np.asarray(nib.load(SHARED / "labelsTr" / "hippocampus_014.nii.gz").dataobj) > 0
    assert _dice(mask, label) > 0.5  # one 3D box around both parts, as one object
    assert not mask[..., :k0].any() and not mask[..., k1:].any()  # never outside the ROI's slices


def test_automatic_infer_segments_a_hippocampus_volume(server, tmp_path):
    params, pred = _infer_all(server, "monai_cbo_auto", "hippocampus_038", {}, tmp_path / "auto.nii.gz")
    assert params["label_names"] == {"anterior": 1, "posterior": 2}
    label = np.asarray(nib.load(SHARED / "labelsTr" / "hippocampus_038.nii.gz").dataobj)
    for value in (1, 2):
        assert _dice(pred == value, label == value) > 0.6, value


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, tmp_path):
    requests, url = server["requests"], server["url"]
    r = _infer(server, "monai_cbo_prompt", "no_such_image", {"roi": ROI_014})
    assert r.status_code == 404 and "no_such_image" in r.text
    r = _infer(server, "no_such_model", "hippocampus_014", {"roi": ROI_014})
    assert r.status_code == 404 and "monai_cbo_prompt" in r.text
    r = _infer(server, "monai_cbo_prompt", "hippocampus_014", {"roi": [0, 0, 10, 10, 0, 400]})
    assert r.status_code == 422 and "outside the volume" in r.text
    r = _infer(server, "monai_cbo_prompt", "hippocampus_014", {"roi": "a box"})
    assert r.status_code == 422 and "roi" in r.text
    r = _infer(server, "monai_cbo_prompt", "hippocampus_014", {"foreground": [[10, 10, 10]]})
    assert r.status_code == 422 and "ROI box" in r.text
    r = requests.post(
        f"{url}/infer/monai_cbo_prompt", params={"image": "hippocampus_014"}, files={"params": (None, "{not json")}
    )
    assert r.status_code == 422 and "not valid JSON" in r.text
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a gzip file")
    with open(corrupt, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": "hippocampus_014"}, files={"label": f}, timeout=60)
    assert r.status_code == 422 and "hippocampus_014" in r.text and "not saved" in r.text
    r = requests.delete(f"{url}/datastore/image", params={"id": "hippocampus_014"}, timeout=60)
    assert r.status_code == 403
    assert requests.get(f"{url}/info/", timeout=30).status_code == 200
    assert _digest(server["studies"]) == server["digest"]  # nothing in the studies folder changed
    assert not (server["studies"] / "labels" / "final").exists() or not any(
        (server["studies"] / "labels" / "final").iterdir()
    )


def test_train_on_saved_labels_then_infer_uses_the_new_adapter(server, tmp_path):
    """Save two labels through the API, fine-tune a tiny run, and the next prompted request uses the new
    adapter without a restart: its name is in the answer and the mask changes."""
    requests, url = server["requests"], server["url"]
    roi = {"roi": [5, 5, 30, 40, 8, 30]}
    params, before_mask = _infer_all(server, "monai_cbo_prompt", "hippocampus_045", roi, tmp_path / "before.nii.gz")
    assert params["adapter"].endswith("bundles/hippocampus_mri_cbo/models/adapter.pt")
    for case in CASES[:2]:
        with open(SHARED / "labelsTr" / f"{case}.nii.gz", "rb") as f:
            r = requests.put(
                f"{url}/datastore/label",
                params={"image": case, "tag": "final"},
                files={"label": (f"{case}.nii.gz", f)},
                timeout=60,
            )
        assert r.status_code == 200, r.text
    r = requests.post(f"{url}/train/monai_cbo_train", json={"max_epochs": 1, "slices_per_volume": 2}, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 900
    while True:
        status = requests.get(f"{url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR") or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert status.get("status") == "DONE", status
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["monai_cbo_train"]
    assert stats["status"] == "DONE" and stats["train"] == [f"{CASES[0]}.nii.gz"]
    assert stats["validation"] == [f"{CASES[1]}.nii.gz"]
    adapter = Path(stats["adapter"])
    assert adapter.is_file() and adapter.parent == server["root"] / "work" / "models"
    params, after_mask = _infer_all(server, "monai_cbo_prompt", "hippocampus_045", roi, tmp_path / "after.nii.gz")
    assert params["adapter"] == str(adapter)
    assert not np.array_equal(before_mask, after_mask)
    saved = server["studies"] / "labels" / "final"
    assert sorted(p.name for p in saved.iterdir()) == [f"{c}.nii.gz" for c in CASES[:2]]
    assert _digest(server["studies"]) == server["digest"]  # the images themselves untouched
