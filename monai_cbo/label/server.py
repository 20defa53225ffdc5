"""``monai-cbo label``: MONAI Label's own server with the monai_cbo app on a local folder of volumes.

The server is cut down and guarded (:mod:`~monai_cbo.label.guard`, :mod:`~monai_cbo.label.routes`): without a
token it listens on the loopback address only; no browser page of another origin may call it unless the user
names that origin; request bodies, training parameters and the inference queue are bounded. The threat model
is in ``docs/label.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import INSTALL, monailabel_problem
from .guard import LOOPBACK_HOSTS, Refused, normalise_origin, plain_name

__all__ = ["TOKEN_ENV", "add_parser", "serve", "write_app"]

LOOPBACK = LOOPBACK_HOSTS
TOKEN_ENV = "MONAI_CBO_LABEL_TOKEN"  #: where the token is read from when --token is not given

_MAIN_PY = '''"""Written by monai-cbo label: MONAI Label loads the app class from this file."""

from monai_cbo.label.app import MonaiCboApp  # noqa: F401
'''


def write_app(work: Path) -> Path:
    """The app folder MONAI Label is started on (``<work>/app`` with its ``main.py``); MONAI Label adds its
    own ``model``, ``lib``, ``logs`` and ``bin`` folders there, so it lives in the work folder, not the package."""
    app = work / "app"
    app.mkdir(parents=True, exist_ok=True)
    main = app / "main.py"
    if not main.is_file() or main.read_text(encoding="utf-8") != _MAIN_PY:
        tmp = app / ".main.py.partial"
        tmp.write_text(_MAIN_PY, encoding="utf-8")
        os.replace(tmp, main)
    return app


def _check_studies(studies: Path) -> None:
    from ..inferers.volume import IMAGE_SUFFIXES

    if not studies.is_dir():
        raise FileNotFoundError(f"studies folder {studies} does not exist; give a folder of NIfTI / NRRD volumes")
    volumes = [p for p in studies.iterdir() if p.is_file() and p.name.lower().endswith(tuple(IMAGE_SUFFIXES))]
    if not volumes:
        raise FileNotFoundError(
            f"studies folder {studies} holds no volume ({', '.join(IMAGE_SUFFIXES)}); put the images to label there"
        )
    named, linked = [], []
    for path in volumes:
        try:
            plain_name(next(path.name[: -len(s)] for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), "id")
        except Refused:
            named.append(path.name)
        if studies.resolve() not in path.resolve().parents:
            linked.append(path.name)
    for found, why, fix in (
        (named, "their names are not plain names (no leading '.' or white space, at most 128 characters)", "rename"),
        (linked, "they are links to files outside the studies folder", "copy the files in"),
    ):
        if found:
            shown = ", ".join(repr(n) for n in found[:5]) + (" ..." if len(found) > 5 else "")
            print(
                f"monai-cbo label: {len(found)} volume(s) cannot be served, {why}: {shown}; {fix} to serve them",
                file=sys.stderr,
            )


def _error_answers() -> dict:
    """4xx answers, with the reason, for the bad requests MONAI Label's endpoints would answer with a bare 500:
    ``params`` that is not JSON, an unknown image or label id, other invalid input (a :class:`Refused` name,
    path or value gets its own answer from :func:`~monai_cbo.label.routes.harden`)."""
    from fastapi.responses import JSONResponse
    from monailabel.interfaces.exception import (
        ImageNotFoundException,
        LabelNotFoundException,
        MONAILabelError,
        MONAILabelException,
    )

    async def not_json(request, err):
        return JSONResponse({"detail": f"params is not valid JSON ({err}); send a JSON object"}, status_code=422)

    async def not_found(request, err):
        return JSONResponse({"detail": err.msg}, status_code=404)

    async def monailabel_error(request, err):
        status = 422 if err.error == MONAILabelError.INVALID_INPUT else 500
        return JSONResponse({"detail": err.msg}, status_code=status)

    return {
        json.JSONDecodeError: not_json,
        ImageNotFoundException: not_found,
        LabelNotFoundException: not_found,
        MONAILabelException: monailabel_error,
    }


def serve(
    studies: str | Path,
    work: str | Path = "runs/label",
    host: str = "127.0.0.1",
    port: int = 8000,
    bundle: str | None = None,
    adapter: str | Path | None = None,
    device: str | None = None,
    modality: str = "ct",
    log_level: str = "info",
    token: str | None = None,
    allow_origins: list[str] | tuple[str, ...] = (),
    max_upload_mb: float = 1024,
    max_train_minutes: float = 30.0,
    allow_image_overwrite: bool = False,
    infer_queue: int = 4,
    encoder_runtime: str = "auto",
) -> int:
    """Start MONAI Label on ``studies`` with the monai_cbo app; returns when the server stops.

    Fails with a message (exit code 2), not a traceback, when MONAI Label is not installed, the studies folder
    is missing or empty, the bundle is unknown, the adapter file is missing, an allowed origin is not one, or
    ``host`` is not a loopback address and no ``token`` is set (anyone who reaches the port could then read the
    studies and run the model)."""
    studies, work = Path(studies).resolve(), Path(work).resolve()
    token = token or os.environ.get(TOKEN_ENV) or None
    try:
        _check_studies(studies)
        if bundle:
            from ..bundles import is_bundle_path, load_bundle

            info = load_bundle(bundle)  # checked before the server starts
            if is_bundle_path(bundle):  # the app runs in its own working folder: hand it the absolute path
                bundle = str(info.path)
        if adapter and not Path(adapter).is_file():
            raise FileNotFoundError(f"adapter {adapter} does not exist; give an adapter file written by training")
        origins = [normalise_origin(o) for o in allow_origins]
        if host not in LOOPBACK and not token:
            raise ValueError(
                f"--host {host} would let anyone who reaches port {port} read {studies} and run the model; give a "
                f"token (--token, or the {TOKEN_ENV} environment variable) to listen beyond this machine"
            )
        if token is not None and len(token) < 16:
            raise ValueError(
                "the token is shorter than 16 characters; use a long random one, e.g. the output of "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if work == studies or studies in work.parents:
            raise ValueError(f"the work folder {work} lies inside the studies folder; give one outside it")
        if not max_upload_mb > 0 or not 0.5 <= max_train_minutes <= 24 * 60 or infer_queue < 0:
            raise ValueError("--max-upload-mb must be positive, --max-train-minutes 0.5 .. 1440 and --infer-queue >= 0")
    except (FileNotFoundError, ValueError) as err:
        print(f"monai-cbo label: {err}", file=sys.stderr)
        return 2
    app = write_app(work)
    scratch = work / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    conf = {
        "work": str(work),
        "bundle": bundle or "",
        "adapter": str(Path(adapter).resolve()) if adapter else "",
        "device": device or "",
        "encoder_runtime": encoder_runtime,
        "modality": modality,
        "max_train_minutes": str(float(max_train_minutes)),
        "allow_image_overwrite": str(bool(allow_image_overwrite)).lower(),
    }
    # MONAI Label reads its settings from the environment, here and in the train task's own process; every
    # temporary file of the server and its tasks goes to the work folder's tmp/
    os.environ.update(
        MONAI_LABEL_APP_DIR=str(app),
        MONAI_LABEL_STUDIES=str(studies),
        MONAI_LABEL_APP_CONF=json.dumps(conf),
        MONAI_LABEL_SERVER_PORT=str(port),
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_AUTO_UPDATE_SCORING="false",
        MONAI_LABEL_CORS_ORIGINS="[]",
        TMPDIR=str(scratch),
    )
    tempfile.tempdir = str(scratch)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(app)) if p)
    problem = monailabel_problem()
    if problem:
        print(f"monai-cbo label: {problem}", file=sys.stderr)
        return 2
    import uvicorn
    from monailabel.app import app as api

    from .guard import Guard
    from .routes import harden

    served = harden(api, work, token=token, origins=origins, infer_queue=infer_queue, handlers=_error_answers())
    guarded = Guard(
        served,
        token=token,
        origins=origins,
        hosts=LOOPBACK_HOSTS if host in LOOPBACK else None,
        max_body=int(max_upload_mb * (1 << 20)),
    )
    model = conf["adapter"] or ("the bundle's adapter" if bundle else "zero-shot LiteMedSAM")
    print(
        f"monai-cbo label: MONAI Label on http://{host}:{port} with {studies} ({model}; work folder {work})",
        flush=True,
    )
    if token:
        print("monai-cbo label: every request must carry 'Authorization: Bearer <token>'", flush=True)
    else:
        print(
            "monai-cbo label: no token: listening on this machine only (any program on it can call the server; "
            f"set {TOKEN_ENV} to require a token)",
            flush=True,
        )
    print(
        f"monai-cbo label: browser origins allowed: {', '.join(origins) if origins else 'this server only'}",
        flush=True,
    )
    uvicorn.run(guarded, host=host, port=port, log_level=log_level, access_log=False)
    return 0


def _run(args: argparse.Namespace) -> int:
    return serve(
        args.studies,
        args.work,
        args.host,
        args.port,
        args.bundle,
        args.adapter,
        args.device,
        args.modality,
        token=args.token,
        allow_origins=args.allow_origin or [],
        max_upload_mb=args.max_upload_mb,
        max_train_minutes=args.max_train_minutes,
        allow_image_overwrite=args.allow_image_overwrite,
        infer_queue=args.infer_queue,
        encoder_runtime=args.encoder_runtime,
    )


def add_parser(sub) -> None:
    """The ``monai-cbo label`` command."""
    p = sub.add_parser(
        "label",
        help="serve a folder of volumes to 3D Slicer / OHIF through MONAI Label (optional extra: [label])",
        description="Starts MONAI Label's own server with the monai_cbo app on a local folder of NIfTI / NRRD "
        "volumes: a prompted task (ROI box and clicks -> propagated 3D mask), an automatic task (every class of "
        "the adapter) and, with --bundle, a train task that fine-tunes an adapter on the labels saved so far; "
        "the infer tasks use the newest adapter without a restart. The server reads and writes only its studies "
        "and work folders, never overwrites an image, and refuses other web origins; without a token it "
        f"listens on this machine only (threat model: docs/label.md). Needs the label extra: {INSTALL}. Steps "
        "for 3D Slicer: docs/label.md.",
    )
    p.add_argument("--studies", required=True, help="folder of volumes to label (labels go to its labels/final/)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default loopback only; another needs a token)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--bundle",
        default=None,
        help="a shipped bundle by name, or a bundle folder's path (one written by monai-cbo adapt): its adapter, "
        "classes, preprocessing, training",
    )
    source.add_argument("--adapter", default=None, help="an adapter file instead of a bundle (no train task)")
    p.add_argument("--modality", default="ct", choices=["ct", "mri"], help="without --bundle: intensity scaling (ct)")
    p.add_argument("--work", default="runs/label", help="work folder: the app, fine-tuned adapters (runs/label)")
    p.add_argument("--device", default=None, help="torch device for inference (default CUDA when present)")
    from ..networks.runtime import RUNTIMES, default_runtime

    p.add_argument(
        "--encoder-runtime",
        choices=RUNTIMES,
        default=default_runtime(),
        help="what runs the image encoder: auto (default) is openvino where it is installed and inference runs on "
        "the CPU (the same masks, the encoder about 2x faster; each new adapter is converted once, in seconds, "
        "before its first answer), else torch; as monai-cbo segment's",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"a bearer token every request must carry (default: the {TOKEN_ENV} environment variable, which "
        "keeps it out of the process list); needed to listen on a non-loopback --host",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="URL",
        help="a web origin (scheme://host[:port]) whose pages may call the server; repeatable (default none: "
        "only the OHIF viewer this server serves)",
    )
    p.add_argument("--max-upload-mb", type=float, default=1024, help="largest request body in MiB (1024)")
    p.add_argument(
        "--max-train-minutes",
        type=float,
        default=30.0,
        help="the longest training a train request may ask for, in minutes (30; a request's default is 10)",
    )
    p.add_argument(
        "--infer-queue", type=int, default=4, help="inference requests that may wait behind the running one (4)"
    )
    p.add_argument(
        "--allow-image-overwrite",
        action="store_true",
        help="let an upload replace an image of the studies folder with the same id (default: 409)",
    )
    p.set_defaults(func=_run)
