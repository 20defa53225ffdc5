"""The label server's one rule for names and paths, and the request guard in front of it (no MONAI Label needed)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from monai_cbo.label.guard import (
    NAME_MAX,
    Guard,
    Refused,
    inside,
    normalise_origin,
    parse_params,
    plain_name,
    upload_name,
    upload_suffix,
)


@pytest.mark.parametrize("name", ["hippocampus_014", "case-1.v2", "a", "x" * NAME_MAX, "BraTS 001"])
def test_plain_names_pass(name):
    assert plain_name(name, "the image id") == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../x", "path separator"),
        ("/etc/passwd", "path separator"),
        ("a\\b", "path separator"),
        ("..", "starts with '.'"),
        (".", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("x\x00y", "control character"),
        ("x\ny", "control character"),
        (" x", "white space"),
        ("x" * (NAME_MAX + 1), "characters long"),
    ],
)
def test_names_that_could_reach_a_path_are_refused_with_the_reason(name, why):
    with pytest.raises(Refused, match="the label tag") as err:
        plain_name(name, "the label tag")
    assert err.value.status == 422 and why in err.value.message


@pytest.mark.parametrize("value", [None, "", 5, ["a"]])
def test_missing_or_non_string_names_are_refused(value):
    with pytest.raises(Refused, match="missing or not a string"):
        plain_name(value, "the image id")


def test_inside_follows_links_out_of_the_folder(tmp_path):
    root = tmp_path / "studies"
    root.mkdir()
    (root / "a.nii.gz").write_bytes(b"x")
    assert inside(root / "a.nii.gz", root, "image") == (root / "a.nii.gz").resolve()
    assert inside(root / "labels" / "final" / "a.nii.gz", root, "label").parent.name == "final"
    outside = tmp_path / "secret.nii.gz"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.nii.gz")
    for path in (root / "link.nii.gz", root / ".." / "secret.nii.gz", tmp_path / "studies2" / "x"):
        with pytest.raises(Refused, match="outside the server's folder studies/") as err:
            inside(path, root, "image")
        assert err.value.status == 403


def test_upload_names_give_only_a_suffix_and_must_be_nifti():
    assert upload_name("/tmp/slicer/label.nii.gz") == "label.nii.gz"
    assert upload_name("C:\\Users\\x\\label.nii") == "label.nii"
    assert upload_suffix("C:\\Users\\x\\label.nii.GZ", "label") == ".nii.gz"
    assert upload_suffix("../../x.nii", "label") == ".nii"
    for name in ("a", "x.nrrd", "x.nhdr", "x.mha", ".nii.gz", None, "x.nii.gz.exe"):
        with pytest.raises(Refused) as err:
            upload_suffix(name, "uploaded label")
        assert err.value.status in (415, 422), name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"roi": [1, 2, Infinity]}', "Infinity"),
        ('{"roi": [1, 2, -Infinity]}', "-Infinity"),
        ('{"a": {"b": [NaN]}}', "NaN"),
        ("[1, 2]", "must be a JSON object, got a list"),
        ('"text"', "got a str"),
        ("{not json", "not valid JSON"),
        ("[" * 100000, "not valid JSON"),
        ('{"x": 1e999}', "params.x holds inf"),
    ],
)
def test_params_must_be_an_object_of_finite_numbers(text, message):
    with pytest.raises(Refused, match="params") as err:
        parse_params(text)
    assert err.value.status == 422 and message in err.value.message


def test_params_accepts_objects_and_empty_forms():
    assert parse_params('{"roi": [1, 2.5, 3], "x": {"y": true}}') == {"roi": [1, 2.5, 3], "x": {"y": True}}
    assert parse_params("") == {} and parse_params(None) == {} and parse_params("  ") == {}


def test_origins_are_normalised_or_refused():
    assert normalise_origin("HTTP://Viewer.Example:3000/") == "http://viewer.example:3000"
    for bad in ("viewer.example", "file:///x", "http://x/path", "*"):
        with pytest.raises(ValueError, match="is not an origin"):
            normalise_origin(bad)


def _call(guard: Guard, method="GET", path="/info/", headers=None, host="127.0.0.1:8000"):
    """Send one request through ``guard``; (status, body, whether the app behind it was reached)."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard.app = app
    raw = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "scheme": "http"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body.decode(), bool(reached)


def test_guard_refuses_foreign_origins_before_anything_runs():
    guard = Guard(None, origins=["http://viewer.example:3000"])
    status, body, reached = _call(guard, "POST", "/train/x", {"Origin": "http://evil.example"})
    assert (status, reached) == (403, False)
    assert "--allow-origin http://evil.example" in json.loads(body)["detail"]
    status, _, reached = _call(guard, "OPTIONS", "/info/", {"Origin": "null", "Access-Control-Request-Method": "PUT"})
    assert (status, reached) == (403, False)
    assert _call(guard, "GET", "/info/", {"Origin": "http://viewer.example:3000"})[0] == 200
    assert _call(guard, "POST", "/infer/m", {"Origin": "http://127.0.0.1:8000"})[0] == 200  # its own OHIF viewer
    assert _call(guard, "GET", "/info/")[0] == 200  # no Origin: not a browser page


def test_guard_refuses_other_host_names_dns_rebinding():
    guard = Guard(None)
    status, body, reached = _call(guard, host="evil.example:8000")
    assert (status, reached) == (421, False) and "evil.example" in body
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert _call(guard, host=host)[0] == 200, host
    assert _call(Guard(None, hosts=None), host="labeller.lab.example:8000")[0] == 200  # with a token: any name


def test_guard_token():
    token = "s3cret-token-of-some-length"
    guard = Guard(None, token=token, origins=["http://viewer.example"])
    assert _call(guard)[:2][0] == 401
    status, body, reached = _call(guard, headers={"Authorization": "Bearer wrong"})
    assert (status, reached) == (401, False) and "Authorization: Bearer" in body
    assert _call(guard, headers={"Authorization": f"Basic {token}"})[0] == 401
    assert _call(guard, headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert _call(guard, path="/auth/")[0] == 200  # the login a client asks first
    assert _call(guard, "POST", "/auth/token")[0] == 200
    assert _call(guard, "GET", "/auth/token/valid")[0] == 401
    preflight = {"Origin": "http://viewer.example", "Access-Control-Request-Method": "POST"}
    assert _call(guard, "OPTIONS", "/infer/m", preflight)[0] == 200  # a browser's preflight carries no token
    assert _call(guard, "OPTIONS", "/infer/m")[0] == 401


def test_guard_bounds_request_bodies_before_reading_them():
    guard = Guard(None, max_body=1000)
    status, body, reached = _call(guard, "PUT", "/datastore/label", {"Content-Length": "1001"})
    assert (status, reached) == (413, False) and "at most 1,000" in body
    assert _call(guard, "PUT", "/datastore/label", {"Content-Length": "1000"})[0] == 200
    assert _call(guard, "PUT", "/datastore/label", {"Transfer-Encoding": "chunked"})[0] == 411
    assert _call(guard, "POST", "/infer/m", {"Content-Length": "-5"})[0] == 400
    assert _call(guard, "GET", "/info/")[0] == 200


def test_guard_closes_websockets_it_does_not_serve():
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"127.0.0.1:8000")]}
    asyncio.run(Guard(app)(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and not reached
