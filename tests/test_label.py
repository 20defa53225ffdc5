"""``monai-cbo label``: MONAI Label's real server with the monai_cbo app, real HTTP on the loopback address.

The server tests need the label extra (``pip install -e ".[label]" && pip install --no-deps monailabel==0.8.5``,
which ``.ci/run`` installs) and the shared hippocampus volumes; without either they skip with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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


def _start(root: Path, options: list[str], env: dict | None = None):
    """A label server on a free loopback port over ``root/studies``; (process, url, log)."""
    requests = pytest.importorskip("requests")
    port = _free_port()
    log = open(root / "server.log", "w")
    cmd = [sys.executable, "-m", "monai_cbo.cli", "label", "--studies", str(root / "studies")]
    cmd += ["--work", str(root / "work"), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if requests.get(f"{url}/auth/", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {(root / 'server.log').read_text(encoding='utf-8')[-3000:]}")
        time.sleep(1)
    return proc, url, log


def _stop(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
    proc, url, log = _start(root, ["--bundle", "hippocampus_mri_cbo"])
    yield {"url": url, "studies": studies, "root": root, "requests": requests, "digest": _digest(studies), "proc": proc}
    _stop(proc, log)


TOKEN = "a-long-random-token-for-the-tests"
VIEWER = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """A server with a token (from the environment) and one allowed web origin; zero-shot, no bundle."""
    if SKIP:
        pytest.skip(SKIP)
    root = tmp_path_factory.mktemp("label_token")
    (root / "studies").mkdir()
    shutil.copy(SHARED / "imagesTr" / f"{CASES[0]}.nii.gz", root / "studies")
    options = ["--modality", "mri", "--allow-origin", VIEWER]
    proc, url, log = _start(root, options, env={"MONAI_CBO_LABEL_TOKEN": TOKEN})
    yield url
    _stop(proc, log)


def test_a_server_with_a_token_serves_only_requests_that_carry_it(token_server):
    import requests

    url, bearer = token_server, {"Authorization": f"Bearer {TOKEN}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = requests.get(f"{url}/info/", headers=headers, timeout=30)
        assert r.status_code == 401 and "Authorization: Bearer" in r.text, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert requests.get(f"{url}/info/", headers=bearer, timeout=30).status_code == 200
    assert requests.get(f"{url}/datastore/", headers=bearer, timeout=30).json()["total"] == 1
    # the login MONAI Label's clients (3D Slicer) ask for: any user name, the token as the password
    assert requests.get(f"{url}/auth/", timeout=30).json()["enabled"] is True
    login = requests.post(f"{url}/auth/token", data={"username": "me", "password": TOKEN}, timeout=30)
    assert login.status_code == 200 and login.json() == {"access_token": TOKEN, "token_type": "Bearer"}
    assert requests.post(f"{url}/auth/token", data={"username": "me", "password": "x"}, timeout=30).status_code == 401
    assert requests.get(f"{url}/auth/token/valid", headers=bearer, timeout=30).status_code == 200


def test_only_the_allowed_origin_gets_cors_answers(token_server):
    import requests

    url, bearer = token_server, {"Authorization": f"Bearer {TOKEN}"}
    preflight = requests.options(
        f"{url}/infer/monai_cbo_prompt",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=30,
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == VIEWER
    assert "access-control-allow-credentials" not in preflight.headers  # no cookies: the token is the credential
    r = requests.get(f"{url}/info/", headers={**bearer, "Origin": VIEWER}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == VIEWER
    r = requests.get(f"{url}/info/", headers={**bearer, "Origin": "http://viewer.example:3001"}, timeout=30)
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_the_server_refuses_to_start_open_to_the_network_or_misconfigured(tmp_path, capsys, monkeypatch):
    """Without a token it listens on the loopback address only; a short token, an origin that is not one or a
    work folder inside the studies are refused, each with exit code 2 and the reason."""
    from monai_cbo.cli import main

    monkeypatch.delenv("MONAI_CBO_LABEL_TOKEN", raising=False)
    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), studies / "a.nii.gz")
    base = ["label", "--studies", str(studies), "--work", str(tmp_path / "work"), "--port", "1"]
    cases = {
        "would let anyone who reaches port 1": ["--host", "0.0.0.0"],
        "shorter than 16 characters": ["--token", "short"],
        "is not an origin": ["--allow-origin", "*"],
        "lies inside the studies folder": ["--work", str(studies / "work")],
    }
    for message, options in cases.items():
        assert main([*base, *options]) == 2, options
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "work").exists()


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


def test_a_foreground_click_alone_segments_the_part_it_lands_on(server, tmp_path):
    """No ROI: the click starts the object on its slice (the adapter's own mask of the part under it gives the
    key box) and the object is propagated with the adapter's stop rules. 014 is held out from the adapter."""
    label = np.asarray(nib.load(SHARED / "labelsTr" / "hippocampus_014.nii.gz").dataobj)
    click = [16, 36, 13]  # the anterior part's deepest voxel (inferers.prompts.correction_click on an empty mask)
    assert label[tuple(click)] == 1
    params, pred = _infer_all(
        server, "monai_cbo_prompt", "hippocampus_014", {"foreground": [click]}, tmp_path / "c.nii.gz"
    )
    assert _dice(pred > 0, label == 1) > 0.7  # measured 0.78
    on = label[pred > 0]
    assert (on == 1).mean() > 3 * (on == 2).mean()  # mostly the part clicked (measured 66 % of the mask, 19 % on
    # the posterior part, where the two touch on the same slices)


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
    r = _infer(server, "monai_cbo_prompt", "hippocampus_014", {"background": [[10, 10, 10]]})
    assert r.status_code == 422 and "foreground click to start from" in r.text
    r = _infer(server, "monai_cbo_prompt", "hippocampus_014", {"foreground": [[10, 10, 10]], "key_slice": 10})
    assert r.status_code == 422 and "key_slice goes with an ROI" in r.text
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


def _listing(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file below ``folder`` (relative path -> SHA-256), but those whose relative path starts with ``skip``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not str(p.relative_to(folder)).startswith(skip)
    }


def _bomb(shape: tuple[int, int, int], size: int) -> bytes:
    """A gzip-compressed NIfTI whose header says ``shape`` (uint8) and whose data decompresses to ``size`` bytes:
    gzip members concatenated (one for the header, then one 16 MiB member of zeros repeated), about 1 KiB per
    decompressed MiB, made in a fraction of a second."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    zeros = gzip.compress(bytes(1 << 24), compresslevel=9)
    return gzip.compress(header.binaryblock + b"\0" * 4) + zeros * (size >> 24)


#: what MONAI Label may change in the server's own folders: its index of the studies, its lock, the app's logs
BOOKKEEPING = ("datastore_v2.json", ".lock", "work/app/", "server.log", "studies/datastore_v2.json", "studies/.lock")


def test_a_hostile_client_reaches_nothing_outside_the_servers_folders(server, tmp_path):
    """Each request a hostile client tried against the first label server, answered 4xx with the reason, and
    nothing on disk changed: not outside the server's folders (a canary volume beside them), not the studies'
    images, and no upload left in any temporary folder."""
    import psutil

    requests, url, root = server["requests"], server["url"], server["root"]
    canary = root / "canary.nii.gz"
    if not canary.exists():
        shutil.copy(SHARED / "imagesTr" / f"{CASES[0]}.nii.gz", canary)
    image = (root / "studies" / f"{CASES[0]}.nii.gz").read_bytes()
    before = _listing(root, BOOKKEEPING)
    system_tmp = set(os.listdir(tempfile.gettempdir()))
    server_process = psutil.Process(_server_pid(server))
    rss_before = server_process.memory_info().rss

    def put(kind: str, params: dict | str, files: dict):
        target = f"{url}/datastore/{kind}" + (f"?{params}" if isinstance(params, str) else "")
        return requests.put(target, params=params if isinstance(params, dict) else None, files=files, timeout=60)

    def infer(image_id: str, params, files: dict | None = None, raw: str | None = None):
        text = params if isinstance(params, str) else json.dumps(params)
        target = f"{url}/infer/monai_cbo_prompt" + (f"?{raw}" if raw else "")
        return requests.post(
            target,
            params=None if raw else {"image": image_id},
            files={"params": (None, text), **(files or {})},
            timeout=600,
        )

    upload = {"file": ("x.nii.gz", image)}
    attacks = {
        "image id ../../x": (put("image", {"image": "../../x"}, upload), 422, "path separator"),
        "image id encoded": (put("image", "image=..%2F..%2Fx", upload), 422, "path separator"),
        "image id ..": (put("image", {"image": ".."}, upload), 422, "starts with '.'"),
        "absolute image id, no suffix": (
            put("image", {"image": str(canary)[:-7]}, {"file": ("a", image)}),
            415,
            "NIfTI",
        ),
        "upload named by a path, no id": (put("image", {}, {"file": (str(canary)[:-7], image)}), 415, "NIfTI"),
        "NRRD upload": (put("image", {"image": "new"}, {"file": ("x.nrrd", image)}), 415, "another file"),
        "existing image": (put("image", {"image": CASES[0]}, upload), 409, "never overwritten"),
        "label tag ..": (put("label", {"image": CASES[0], "tag": ".."}, {"label": ("l.nii.gz", image)}), 422, "tag"),
        "label tag path": (
            put("label", {"image": CASES[0], "tag": "../../x"}, {"label": ("l.nii.gz", image)}),
            422,
            "tag",
        ),
        "label tag encoded": (put("label", f"image={CASES[0]}&tag=%2E%2E", {"label": ("l.nii.gz", image)}), 422, "tag"),
        "label of ../image": (
            put("label", {"image": f"../{CASES[0]}"}, {"label": ("l.nii.gz", image)}),
            422,
            "image id",
        ),
        "label bomb": (
            put("label", {"image": CASES[0]}, {"label": ("l.nii.gz", _bomb((1300, 1300, 1300), 2 << 30))}),
            422,
            "header says shape [1300, 1300, 1300]",
        ),
        "image bomb": (
            put("image", {"image": "bomb"}, {"file": ("b.nii.gz", _bomb((2048, 2048, 1024), 1 << 28))}),
            413,
            "holds 4,294,967,296 bytes",
        ),
        "save_label with tag ..": (
            infer(CASES[0], {"roi": ROI_014, "save_label": True, "label_tag": ".."}),
            422,
            "label_tag",
        ),
        "infer an absolute path": (infer(str(canary), {"roi": ROI_014}), 422, "path separator"),
        "infer ../image": (infer(f"../studies/{CASES[0]}", {"roi": ROI_014}), 422, "path separator"),
        "infer encoded path": (infer("", {"roi": ROI_014}, raw="image=%2Fetc%2Fpasswd"), 422, "path separator"),
        "infer params.image": (infer(CASES[0], {"roi": ROI_014, "image": str(canary)}), 422, "params.image"),
        "infer an uploaded file": (infer(CASES[0], {"roi": ROI_014}, {"file": ("x.nii.gz", image)}), 422, "datastore"),
        "roi Infinity": (infer(CASES[0], '{"roi": [6, 5, 27, 44, 5, Infinity]}'), 422, "Infinity"),
        "roi NaN": (infer(CASES[0], '{"roi": [NaN, 5, 27, 44, 5, 35]}'), 422, "NaN"),
        "key_slice huge": (infer(CASES[0], {"roi": ROI_014, "key_slice": 1e300}), 422, "finite"),
        "params a list": (infer(CASES[0], "[1, 2]"), 422, "JSON object"),
        "roi zero extent": (infer(CASES[0], {"roi": [6, 5, 6, 44, 5, 35]}), 422, "no extent"),
        "roi negative extent": (infer(CASES[0], {"roi": [6, 5, 27, 44, 20, 10]}), 422, "no extent"),
        "too many clicks": (infer(CASES[0], {"roi": ROI_014, "foreground": [[10, 10, 10]] * 101}), 422, "at most 100"),
        "train 100000 minutes": (
            requests.post(f"{url}/train/monai_cbo_train", json={"minutes": 100000}, timeout=60),
            422,
            "outside 0.5..30.0",
        ),
        "train 100000 steps": (
            requests.post(f"{url}/train/monai_cbo_train", json={"steps": 100000}, timeout=60),
            422,
            "outside 0..2000",
        ),
        "train NaN": (
            requests.post(
                f"{url}/train/monai_cbo_train",
                data='{"learning_rate": NaN}',
                headers={"content-type": "application/json"},
                timeout=60,
            ),
            422,
            "learning_rate",
        ),
        "train unknown parameter": (
            requests.post(f"{url}/train/monai_cbo_train", json={"dataset_dir": "/"}, timeout=60),
            422,
            "unknown",
        ),
        "download ../image": (
            requests.get(f"{url}/datastore/image", params={"image": "../x"}, timeout=60),
            422,
            "image id",
        ),
        "label of tag ..": (
            requests.get(f"{url}/datastore/label", params={"label": CASES[0], "tag": ".."}, timeout=60),
            422,
            "tag",
        ),
        "image info ../": (
            requests.put(
                f"{url}/datastore/image/info", params={"image": "../x"}, files={"info": (None, "{}")}, timeout=60
            ),
            422,
            "image id",
        ),
        "model upload": (
            requests.put(f"{url}/model/monai_cbo_prompt", files={"file": ("m.pt", b"x")}, timeout=60),
            404,
            "not served",
        ),
        "session upload": (
            requests.put(f"{url}/session/", files={"files": ("x.nii.gz", image)}, timeout=60),
            404,
            "not served",
        ),
        "batch infer": (requests.post(f"{url}/batch/infer/monai_cbo_prompt", timeout=60), 404, "not served"),
        "logs": (requests.get(f"{url}/logs/", timeout=60), 404, "not served"),
        "foreign origin": (
            requests.options(
                f"{url}/info/",
                headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
                timeout=60,
            ),
            403,
            "--allow-origin",
        ),
        "foreign origin, simple POST": (
            requests.post(f"{url}/train/monai_cbo_train", headers={"Origin": "http://evil.example"}, timeout=60),
            403,
            "evil.example",
        ),
        "DNS rebinding": (requests.get(f"{url}/info/", headers={"Host": "evil.example"}, timeout=60), 421, "Host"),
    }
    wrong = {
        name: (r.status_code, r.text[:300])
        for name, (r, status, text) in attacks.items()
        if r.status_code != status or text not in r.text
    }
    assert not wrong, wrong
    assert "access-control-allow-origin" not in attacks["foreign origin"][0].headers
    grown = server_process.memory_info().rss - rss_before  # a bomb read whole would add gigabytes
    assert grown < 256 << 20, f"the server grew by {grown >> 20} MiB during the attacks (decompression bombs)"
    assert requests.get(f"{url}/info/", timeout=30).status_code == 200  # still serving
    assert _listing(root, BOOKKEEPING) == before  # nothing changed, inside the folders or beside them
    assert not any((root / "work" / "tmp").iterdir())  # every upload removed, refused or not
    leftovers = set(os.listdir(tempfile.gettempdir())) - system_tmp
    assert not {n for n in leftovers if n.startswith("tmp") or n.endswith(".nii.gz")}, leftovers
    assert not (server["studies"] / "labels" / "final").exists() or not any(
        (server["studies"] / "labels" / "final").iterdir()
    )


def _server_pid(server) -> int:
    return server["proc"].pid


def test_a_one_slice_roi_segments_that_slice_only(server, tmp_path):
    """The ROI's slices bound the prompted task, a one-slice ROI's too (it does not propagate beyond it)."""
    i0, j0, i1, j1, _, _ = ROI_014
    params, mask = _infer_all(
        server, "monai_cbo_prompt", CASES[0], {"roi": [i0, j0, i1, j1, 17, 18]}, tmp_path / "one.nii.gz"
    )
    assert params["slices"] == 1
    assert mask[..., 17].any() and not np.delete(mask, 17, axis=2).any()


def test_the_server_answers_while_an_inference_runs(server):
    """Inference runs off the event loop: /info/ and /datastore/ answer within a second while it runs."""
    import threading

    requests, url = server["requests"], server["url"]
    done = threading.Event()

    def run():
        _infer(server, "monai_cbo_prompt", CASES[2], {"roi": [2, 2, 33, 45, 10, 16]})
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)
    try:
        for path in ("/info/", "/datastore/", "/train/"):
            start = time.monotonic()
            r = requests.get(f"{url}{path}", timeout=30)
            assert r.status_code in (200, 404), (path, r.text)  # /train/: 404 "no train task found" before any
            assert time.monotonic() - start < 1.0, path
        assert not done.is_set(), "the inference finished before the other requests were sent: nothing was shown"
    finally:
        worker.join(600)


def test_train_status_is_truthful_after_a_stop(server):
    """A training stopped with DELETE /train/ reads STOPPED in /info/ and /train/, not RUNNING; a second training
    while one runs is refused with 429 and the way out."""
    requests, url = server["requests"], server["url"]
    for case in CASES[:2]:
        with open(SHARED / "labelsTr" / f"{case}.nii.gz", "rb") as f:
            r = requests.put(
                f"{url}/datastore/label", params={"image": case}, files={"label": (f"{case}.nii.gz", f)}, timeout=60
            )
        assert r.status_code == 200, r.text
    r = requests.post(f"{url}/train/monai_cbo_train", json={"minutes": 30}, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.post(f"{url}/train/monai_cbo_train", json={"minutes": 1}, timeout=60)
    assert r.status_code == 429 and "DELETE /train/" in r.text
    deadline = time.monotonic() + 300
    while requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["monai_cbo_train"].get("status") != "RUNNING":
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(2)
    assert requests.delete(f"{url}/train/", timeout=60).status_code == 200
    deadline = time.monotonic() + 60
    while (stats := requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["monai_cbo_train"])[
        "status"
    ] == "RUNNING":
        assert time.monotonic() < deadline, stats
        time.sleep(1)
    assert stats["status"] == "STOPPED"
    assert requests.get(f"{url}/train/", timeout=30).json()["status"] == "STOPPED"


def test_train_on_saved_labels_then_infer_uses_the_new_adapter(server, tmp_path):
    """Save two labels through the API, adapt a two-step run (monai-cbo adapt --bundle, as the train task always
    does), and the next prompted request uses the new adapter without a restart: its name is in the answer and
    the mask changes."""
    requests, url = server["requests"], server["url"]
    roi = {"roi": [5, 5, 30, 40, 8, 30]}
    params, before_mask = _infer_all(server, "monai_cbo_prompt", "hippocampus_045", roi, tmp_path / "before.nii.gz")
    assert params["adapter"].endswith("bundles/hippocampus_mri_cbo/models/adapter.pt")
    assert params["stop_rules"] == "the task's"
    for case in CASES[:2]:
        with open(SHARED / "labelsTr" / f"{case}.nii.gz", "rb") as f:
            r = requests.put(
                f"{url}/datastore/label",
                params={"image": case, "tag": "final"},
                files={"label": (f"{case}.nii.gz", f)},
                timeout=60,
            )
        assert r.status_code == 200, r.text
    options = {"steps": 2, "stop_sweep": False}  # seconds, not minutes: no decoder stage, no stop sweep
    r = requests.post(f"{url}/train/monai_cbo_train", json=options, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 900
    while True:
        status = requests.get(f"{url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR") or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert status.get("status") == "DONE", status
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["monai_cbo_train"]
    assert stats["status"] == "DONE" and stats["train"] == [f"{c}.nii.gz" for c in CASES[:2]]
    assert "held back" in stats["validation"] and stats["progress"] == 100 and stats["step"] == 2
    assert set(stats["validation_dice"]) == {"boxes", "automatic"}  # the bundle's classes: class prompts trained
    adapter = Path(stats["adapter"])
    assert adapter.is_file() and adapter.parent == server["root"] / "work" / "models"
    record = json.loads((Path(stats["bundle"]) / "models" / "adapter.json").read_text())
    assert record["recipe"]["preset"] == "adapter_cbo" and record["classes"] == ["anterior", "posterior"]
    assert record["steps"] == 2 and "--bundle" in record["command"]
    params, after_mask = _infer_all(server, "monai_cbo_prompt", "hippocampus_045", roi, tmp_path / "after.nii.gz")
    assert params["adapter"] == str(adapter) and params["stop_rules"] == "the task's"  # none swept: the bundle's
    assert not np.array_equal(before_mask, after_mask)
    saved = server["studies"] / "labels" / "final"
    assert sorted(p.name for p in saved.iterdir()) == [f"{c}.nii.gz" for c in CASES[:2]]
    assert _digest(server["studies"]) == server["digest"]  # the images themselves untouched


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_train_parameters_are_checked_against_the_operators_limits(tmp_path):
    from monai_cbo.bundles import load_bundle
    from monai_cbo.label.guard import Refused
    from monai_cbo.label.train import FineTune

    task = FineTune(load_bundle("hippocampus_mri_cbo"), tmp_path, max_minutes=10)
    assert task.config()["minutes"] == 10 and task.config()["preset"] == "adapter_cbo"  # the bundle's recipe
    assert task.validate({"minutes": 10, "learning_rate": 1e-4, "preset": "lora", "stop_sweep": False}) == {
        "minutes": 10.0,
        "learning_rate": 1e-4,
        "preset": "lora",
        "stop_sweep": False,
    }
    assert task.validate({"steps": 3.0, "decoder_steps": 5}) == {"steps": 3, "decoder_steps": 5}
    refused = {
        "outside 0.5..10.0": {"minutes": 11},
        "outside 0..2000": {"steps": 2001},
        "decoder_steps goes with steps": {"decoder_steps": 5},
        "is not a finite number": {"learning_rate": float("nan")},
        "is not an integer": {"seed": 1.5},
        "is not a number": {"auto_share": True},
        "outside 0.0..1.0": {"click_share": 1.5},
        "is not true or false": {"stop_sweep": "yes"},
        "is not a preset": {"preset": ["lora"]},
        "unknown train parameter(s) ['dataset_dir']": {"dataset_dir": "/"},
        "must be a JSON object": [1],
    }
    for message, params in refused.items():
        with pytest.raises(Refused, match=re.escape(message)) as err:
            task.validate(params)
        assert err.value.status == 422
    # what a request runs: monai-cbo adapt from the bundle, its budget, and nothing a client could add
    options = {**task.config(), "steps": 3, "stop_sweep": False, "click_share": 0.5}
    cmd = task.command(tmp_path / "d.json", tmp_path / "out", options)
    assert cmd[cmd.index("--click-share") + 1] == "0.5"  # a user's clicks taught, when asked
    assert cmd[1:5] == ["-m", "monai_cbo.cli", "adapt", str(tmp_path / "d.json")]
    assert cmd[cmd.index("--bundle") + 1] == str(task.bundle.path) and "--no-stop-sweep" in cmd
    assert cmd[cmd.index("--steps") + 1] == "3" and "--minutes" not in cmd


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_a_trained_adapters_own_stop_rules_reach_the_prompt_task(tmp_path):
    """The train task publishes the stop rules it swept beside the adapter, the rules first; the store gives them
    for that adapter only, and a damaged file falls back to the task's rules instead of failing requests."""
    from monai_cbo.bundles import load_bundle
    from monai_cbo.inferers import PropagationConfig
    from monai_cbo.label.app import AdapterStore
    from monai_cbo.label.train import FineTune

    task = FineTune(load_bundle("hippocampus_mri_cbo"), tmp_path)
    swept = PropagationConfig(min_class_overlap=0.45, patience=2)
    adapter = task._publish(task.bundle.adapter, swept, "20261206-120000")
    store = AdapterStore(tmp_path / "models", task.bundle.adapter, "cpu")
    assert store.current_path() == adapter and adapter.read_bytes() == task.bundle.adapter.read_bytes()
    assert store.stop_rules(adapter) == swept
    assert store.stop_rules(task.bundle.adapter) is None and store.stop_rules(None) is None
    adapter.with_suffix(".stop.json").write_text('{"propagation": {"no_such_rule": 1}}')
    assert store.stop_rules(adapter) is None
    assert not list((tmp_path / "models").glob(".*partial"))


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_a_running_status_whose_process_has_ended_reads_stopped(tmp_path):
    from monai_cbo.bundles import load_bundle
    from monai_cbo.label.train import FineTune

    task = FineTune(load_bundle("hippocampus_mri_cbo"), tmp_path)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for pid, status in ((os.getpid(), "RUNNING"), (ended.pid, "STOPPED"), (None, "STOPPED")):
        task._write_stats({"status": "RUNNING", "pid": pid})
        assert task.stats()["status"] == status, pid
    task._write_stats({"status": "DONE", "pid": ended.pid})
    assert task.stats()["status"] == "DONE"


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_the_inference_queue_answers_503_when_full():
    import asyncio
    import threading

    from monai_cbo.label.guard import Refused
    from monai_cbo.label.routes import InferQueue

    queue, gate, ran = InferQueue(limit=1), threading.Event(), []

    def slow(n):
        gate.wait(10)
        ran.append(n)
        return n

    async def scenario():
        first = asyncio.create_task(queue.run(slow, 1))
        second = asyncio.create_task(queue.run(slow, 2))  # waits behind the first
        await asyncio.sleep(0.2)
        with pytest.raises(Refused, match="already running or queued") as err:
            await queue.run(slow, 3)
        assert err.value.status == 503
        gate.set()
        assert (await first, await second) == (1, 2)
        assert await queue.run(slow, 4) == 4  # room again

    asyncio.run(scenario())
    assert ran == [1, 2, 4]  # one at a time, in order


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_an_uploads_size_is_read_from_its_header_alone(tmp_path):
    """The shape and data size come from the header; a file whose data starts far into its compressed stream
    is refused (it would be decompressed up to there before any check)."""
    import gzip

    from monai_cbo.label.datastore import _nifti_voxels
    from monai_cbo.label.guard import Refused

    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 6, 1))
    header.set_data_dtype(np.int16)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(4 * 5 * 6 * 2)))
    assert _nifti_voxels(good, "label") == ((4, 5, 6), 240)
    header["vox_offset"] = 2 << 20
    far = tmp_path / "far.nii.gz"
    far.write_bytes(gzip.compress(header.binaryblock + bytes((2 << 20) - 348 + 240)))
    with pytest.raises(Refused, match="its data starts 2,097,152 bytes in"):
        _nifti_voxels(far, "label")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b junk")
    with pytest.raises(Refused, match="not a readable NIfTI file"):
        _nifti_voxels(tmp_path / "junk.nii.gz", "label")


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_a_correction_on_a_study_encodes_nothing_again_and_changes_no_result(tmp_path, monkeypatch):
    """The prompt task keeps a study's slice embeddings (and its decodes) between requests: a click added to the
    same ROI encodes no slice again and gives the mask a server without the kept embeddings gives; a study whose
    file changed is encoded again."""
    import torch

    from monai_cbo.data.demo import make_demo_case
    from monai_cbo.inferers import Preprocess, PropagationConfig
    from monai_cbo.label.app import AdapterStore, PromptTask
    from monai_cbo.models import build_segmenter
    from monai_cbo.networks import SamSegmenter
    from monai_cbo.peft import save_adapter

    image, label, affine = make_demo_case(3, shape=(48, 48, 10))
    study = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), study)
    adapter = save_adapter(build_segmenter("tiny", preset="lora_cbo", seed=0), tmp_path / "tiny.pt")
    encoded: list[int] = []
    original = SamSegmenter.encode

    def counting(self, batch: torch.Tensor) -> torch.Tensor:
        encoded.append(batch.shape[0])
        return original(self, batch)

    monkeypatch.setattr(SamSegmenter, "encode", counting)
    i, j, k = np.nonzero(label)
    roi = [int(i.min()), int(j.min()), int(i.max()) + 1, int(j.max()) + 1, int(k.min()), int(k.max()) + 1]
    box = {"image": str(study), "roi": roi}
    click = {**box, "background": [[int(i.min()), int(j.min()), int(k.min())]]}

    def task(name: str) -> PromptTask:
        (tmp_path / name / "models").mkdir(parents=True)
        return PromptTask(
            AdapterStore(tmp_path / name / "models", adapter, "cpu"), Preprocess("ct"), PropagationConfig()
        )

    kept = task("kept")
    kept(box)
    first = sum(encoded)
    assert 0 < first <= roi[5] - roi[4]  # the slices the propagation reached in the ROI, each once
    corrected, _ = kept(click)
    assert sum(encoded) == first  # the correction: nothing encoded again
    fresh, _ = task("fresh")(click)  # a server that kept nothing
    assert np.array_equal(np.asarray(nib.load(corrected).dataobj), np.asarray(nib.load(fresh).dataobj))
    before = sum(encoded)
    os.utime(study, ns=(time.time_ns(), time.time_ns() + 10**9))  # the study changed on disk
    kept(click)
    assert sum(encoded) == before + first


@pytest.mark.skipif(PROBLEM is not None, reason=f"the label extra is not installed ({INSTALL})")
def test_the_store_runs_each_models_encoder_on_the_runtime_asked(tmp_path, monkeypatch):
    """The label server's encoder runtime (--encoder-runtime): openvino gives the model's own embedding, converted
    once per model; torch keeps the model's encode."""
    pytest.importorskip("openvino", reason='the openvino extra is not installed: pip install "monai-cbo[openvino]"')
    import torch

    from monai_cbo.bundles import load_bundle
    from monai_cbo.label.app import AdapterStore
    from monai_cbo.networks import runtime

    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    adapter = load_bundle("hippocampus_mri_cbo").adapter
    plain, _ = AdapterStore(tmp_path / "a", adapter, "cpu", "torch").inferer()
    assert plain.encoder is None
    fast, path = AdapterStore(tmp_path / "b", adapter, "cpu", "openvino").inferer()
    assert path == adapter and fast.encoder.info["runtime"] == "openvino"
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = plain.model.encode(image)
    assert (fast.encoder(image) - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 1  # the adapter's model, converted once
