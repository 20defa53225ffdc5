"""The HTTP surface of ``monai-cbo label``: MONAI Label's API cut down to what the viewers use, with the
endpoints that take uploads, paths or long work replaced by ones that keep :mod:`monai_cbo.label.guard`'s rule.

MONAI Label's own endpoints copy uploads into the system temp folder (world-readable, left behind on errors),
join ids onto folders unchecked, run inference on the event loop (every other request waits) and start
training with whatever parameters arrive. :func:`harden` removes every route the app does not need (model
upload and delete, sessions, batch inference, scoring, the DICOM proxy, logs, dataset archives, WSI: a 404),
and serves these instead:

- ``POST /infer/{model}``: an image of the datastore by id (never a path, never an uploaded file), ``params`` a
  JSON object of finite numbers; run on one inference thread with a bounded queue (a full queue: 503), so
  ``/info/``, ``/datastore/`` and ``/train/`` answer while it runs;
- ``PUT /datastore/image`` and ``PUT /datastore/label``: NIfTI uploads into ``<work>/tmp`` (mode 0600),
  removed whatever happens, then the datastore's own checks (:class:`~monai_cbo.label.app.StudiesDatastore`);
- ``POST /train/{model}``: parameters checked against the operator's limits before anything starts (422), one
  training at a time (429);
- ``/auth/``: the login that MONAI Label's clients (3D Slicer) ask for when the server has a token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, Body, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match

from .guard import Refused, inside, parse_params, plain_name, upload_name, upload_suffix

logger = logging.getLogger(__name__)

__all__ = ["KEPT_ROUTES", "InferQueue", "harden"]

#: MONAI Label's own routes that stay (method, path pattern): reading the datastore, its info fields, the train
#: status and stop, deletes (which the app answers 403) and next-sample
KEPT_ROUTES = (
    ("GET", "/favicon.ico"),
    ("GET", "/info/"),
    ("GET", "/datastore/"),
    ("GET", "/datastore/image"),
    ("GET", "/datastore/image/info"),
    ("PUT", "/datastore/image/info"),
    ("DELETE", "/datastore/image"),
    ("GET", "/datastore/label"),
    ("GET", "/datastore/label/info"),
    ("PUT", "/datastore/label/info"),
    ("DELETE", "/datastore/label"),
    ("GET", "/train/"),
    ("DELETE", "/train/"),
    ("POST", "/activelearning/[A-Za-z0-9_-]+"),
)
_KEPT = [(method, re.compile(pattern)) for method, pattern in KEPT_ROUTES]


class InferQueue:
    """One inference at a time on its own thread, at most ``limit`` waiting; beyond that :class:`Refused` (503)."""

    def __init__(self, limit: int = 4) -> None:
        self.limit = int(limit)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monai_cbo_infer")
        self._count, self._lock = 0, threading.Lock()

    async def run(self, fn, *args):
        with self._lock:
            if self._count > self.limit:  # one running, ``limit`` waiting
                raise Refused(
                    503, f"{self._count} inference requests are already running or queued; send this one again later"
                )
            self._count += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            with self._lock:
                self._count -= 1


@contextmanager
def _spooled(upload: UploadFile, what: str, tmp: Path):
    """The upload copied into ``tmp`` (mode 0600) under its NIfTI suffix: ``(path, suffix)``, removed when the
    block ends, whatever happened in it."""
    suffix = upload_suffix(upload.filename, what)
    tmp.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(suffix=suffix, prefix="upload_", dir=tmp)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as sink:
            shutil.copyfileobj(upload.file, sink)
        yield path, suffix
    finally:
        path.unlink(missing_ok=True)


async def _refused(request, err: Refused) -> JSONResponse:
    logger.warning("refused (%d): %s", err.status, err.message)
    return JSONResponse({"detail": err.message}, status_code=err.status)


class _Dispatch:
    """The ASGI app the server runs: this module's endpoints first, then MONAI Label's kept routes
    (:data:`KEPT_ROUTES`; ``HEAD`` with ``GET``), and a 404 naming the rule for everything else."""

    def __init__(self, ours: FastAPI, theirs: FastAPI) -> None:
        self.ours, self.theirs = ours, theirs

    def _kept(self, method: str, path: str) -> bool:
        method = "GET" if method == "HEAD" else method
        return any(m == method and pattern.fullmatch(path) for m, pattern in _KEPT)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan: MONAI Label starts its app instance
            await self.theirs(scope, receive, send)
            return
        if any(route.matches(scope)[0] == Match.FULL for route in self.ours.router.routes):
            await self.ours(scope, receive, send)
        elif scope["method"] == "OPTIONS" or self._kept(scope["method"], scope["path"]):
            await self.theirs(scope, receive, send)
        else:
            await JSONResponse(
                {"detail": f"{scope['method']} {scope['path']} is not served by monai-cbo label (see docs/label.md)"},
                status_code=404,
            )(scope, receive, send)


def _starting(listed: list[dict]) -> bool:
    """Whether MONAI Label has queued a task whose process has not started yet: a task is listed as SUBMITTED as
    soon as it is queued, its process only once a worker thread has started it, so a second request in between
    would queue a second training behind the first. A task SUBMITTED over a minute ago whose process never
    came (its thread failed) does not count, so it cannot block training for good."""
    from datetime import datetime, timedelta

    recent = datetime.today() - timedelta(minutes=1)
    for task in listed:
        if task.get("status") != "SUBMITTED":
            continue
        try:
            if datetime.strptime(task.get("start_ts", ""), "%Y-%m-%d %H:%M:%S") >= recent:
                return True
        except ValueError:
            continue
    return False


def harden(
    api: FastAPI,
    work: Path,
    token: str | None = None,
    origins: list[str] | None = None,
    infer_queue: int = 4,
    handlers: dict | None = None,
):
    """The ASGI app to serve: MONAI Label's ``api`` cut down to :data:`KEPT_ROUTES`, with the guarded endpoints
    of the module docstring in front (``handlers``: exception class -> handler, for both apps).

    Call it before the server starts: MONAI Label's middleware list is read at its first request. Its CORS is
    removed; with ``origins`` named, only they may call, without cookies."""
    from monailabel.interfaces.utils.app import app_instance
    from monailabel.utils.async_tasks.utils import processes, tasks

    theirs = api
    if api.middleware_stack is not None:
        raise RuntimeError("harden() must run before the server answers its first request")
    api.user_middleware[:] = [m for m in api.user_middleware if m.cls is not CORSMiddleware]
    tmp = Path(work) / "tmp"
    queue = InferQueue(infer_queue)
    ours = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for cls, handler in {Refused: _refused, **(handlers or {})}.items():
        api.add_exception_handler(cls, handler)
        ours.add_exception_handler(cls, handler)

    @ours.post("/infer/{model}", summary="Run a model on an image of the datastore")
    async def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        output: str | None = None,
        session_id: str = "",
        params: Annotated[str, Form()] = "{}",
        file: Annotated[UploadFile | None, File()] = None,
        label: Annotated[UploadFile | None, File()] = None,
    ):
        from monailabel.endpoints.infer import send_response

        if file is not None or label is not None or session_id:
            raise Refused(
                422,
                "this server segments images of its datastore only: upload the image with PUT /datastore/image "
                "and send its id as ?image=ID (no file, label or session upload with /infer)",
            )
        if output not in (None, "image", "json", "all"):
            raise Refused(422, f"output {output!r} is not offered; use image, json or all")
        request = parse_params(params)
        for key in ("image", "model", "label", "file", "session"):  # what would choose what is read
            if key in request:
                raise Refused(
                    422,
                    f"params.{key} is not accepted: the image is the query parameter ?image=ID (an id of the "
                    "datastore) and the model is the path",
                )
        request.update(model=model, image=plain_name(image, "the image id"))
        instance = app_instance()
        result = await queue.run(instance.infer, request)
        return send_response(instance.datastore(), result, output, background_tasks)

    @ours.put("/datastore/image", summary="Upload a new image (NIfTI)")
    def put_image(
        file: Annotated[UploadFile, File()],
        image: str | None = None,
        params: Annotated[str, Form()] = "{}",
    ):
        info = parse_params(params)
        with _spooled(file, "uploaded image", tmp) as (path, suffix):
            image_id = plain_name(image or upload_name(file.filename)[: -len(suffix)], "the image id")
            return {"image": app_instance().datastore().add_image(image_id, str(path), info)}

    @ours.put("/datastore/label", summary="Save a label for an image of the datastore (NIfTI)")
    def put_label(
        image: str,
        label: Annotated[UploadFile, File()],
        params: Annotated[str, Form()] = "{}",
        tag: str = "final",
    ):
        info = parse_params(params)
        image_id, tag = plain_name(image, "the image id"), plain_name(tag, "the label tag")
        with _spooled(label, "uploaded label", tmp) as (path, _):
            instance = app_instance()
            label_id = instance.datastore().save_label(image_id, str(path), tag, info)
        answer = instance.on_save_label(image_id, label_id) or {}
        return {**answer, "image": image_id, "label": label_id}

    @ours.post("/train/{model}", summary="Fine-tune the adapter on the saved labels")
    def train(
        model: str,
        params: Annotated[dict[str, Any] | None, Body()] = None,
        run_sync: bool = False,
        enqueue: bool = False,
    ):
        from monailabel.endpoints.train import run_model

        instance = app_instance()
        trainers = instance._trainers
        if model not in trainers:
            raise Refused(404, f"no train task {model!r} on this server; its train tasks: {', '.join(trainers)}")
        if run_sync or enqueue:
            raise Refused(422, "run_sync and enqueue are not offered: one training runs at a time, in the background")
        if processes("train") or _starting(tasks("train")):
            raise Refused(
                429, "a training is already running; wait for it (GET /train/) or stop it (DELETE /train/) first"
            )
        checked = trainers[model].validate(params or {})
        return run_model(model, checked)

    @ours.get("/auth/", summary="Whether this server needs a token")
    def auth_enabled():
        return {"enabled": bool(token), "client_id": "monai_cbo", "realm": ""}

    @ours.post("/auth/token", summary="Exchange the server's token (as the password) for a bearer token")
    def auth_token(form: Annotated[OAuth2PasswordRequestForm, Depends()]):
        if not token:
            return {"access_token": None, "token_type": None}
        if not hmac.compare_digest(str(form.password).encode(), token.encode()):
            return JSONResponse({"detail": "wrong token: give the server's token as the password"}, status_code=401)
        return {"access_token": token, "token_type": "Bearer"}

    @ours.get("/auth/token/valid", summary="Whether the bearer token sent is valid")
    def auth_valid():
        return {"username": "monai_cbo", "roles": []}

    @ours.get("/ohif/{path:path}", include_in_schema=False)
    def ohif(path: str):
        import monailabel

        root = Path(monailabel.__file__).parent / "endpoints" / "static" / "ohif"
        target = root / path if path else root / "index.html"
        target = inside(target, root, f"/ohif/{path}")
        if not target.is_file():
            target = root / "index.html"
        if not target.is_file():
            raise HTTPException(status_code=404, detail="the OHIF viewer is not part of this MONAI Label install")
        return FileResponse(target)

    app = _Dispatch(ours, theirs)
    if origins:
        app = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_credentials=False,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type"],
        )
    return app
