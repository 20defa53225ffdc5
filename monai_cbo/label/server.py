"""``monai-cbo label``: MONAI Label's own server with the monai_cbo app on a local folder of volumes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import monailabel_problem

__all__ = ["serve", "write_app"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")

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
    if not any(p.is_file() and p.name.lower().endswith(tuple(IMAGE_SUFFIXES)) for p in studies.iterdir()):
        raise FileNotFoundError(
            f"studies folder {studies} holds no volume ({', '.join(IMAGE_SUFFIXES)}); put the images to label there"
        )


def _add_error_answers(api) -> None:
    """4xx answers, with the reason, for the bad requests MONAI Label's endpoints would answer with a bare 500:
    ``params`` that is not JSON, an unknown image or label id, other invalid input."""
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

    api.add_exception_handler(json.JSONDecodeError, not_json)
    api.add_exception_handler(ImageNotFoundException, not_found)
    api.add_exception_handler(LabelNotFoundException, not_found)
    api.add_exception_handler(MONAILabelException, monailabel_error)


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
) -> int:
    """Start MONAI Label on ``studies`` with the monai_cbo app; returns when the server stops.

    Fails with a message (exit code 2), not a traceback, when MONAI Label is not installed, the studies folder
    is missing or empty, the bundle is unknown or the adapter file is missing. Listens on ``host`` (loopback by
    default: anyone who reaches the port can read the studies and run the model)."""
    studies, work = Path(studies).resolve(), Path(work).resolve()
    try:
        _check_studies(studies)
        if bundle:
            from ..bundles import load_bundle

            load_bundle(bundle)
        if adapter and not Path(adapter).is_file():
            raise FileNotFoundError(f"adapter {adapter} does not exist; give an adapter file written by training")
    except (FileNotFoundError, ValueError) as err:
        print(f"monai-cbo label: {err}", file=sys.stderr)
        return 2
    app = write_app(work)
    conf = {
        "work": str(work),
        "bundle": bundle or "",
        "adapter": str(Path(adapter).resolve()) if adapter else "",
        "device": device or "",
        "modality": modality,
    }
    # MONAI Label reads its settings from the environment, here and in the train task's own process
    os.environ.update(
        MONAI_LABEL_APP_DIR=str(app),
        MONAI_LABEL_STUDIES=str(studies),
        MONAI_LABEL_APP_CONF=json.dumps(conf),
        MONAI_LABEL_SERVER_PORT=str(port),
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_AUTO_UPDATE_SCORING="false",
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(app)) if p)
    problem = monailabel_problem()
    if problem:
        print(f"monai-cbo label: {problem}", file=sys.stderr)
        return 2
    import uvicorn
    from monailabel.app import app as api

    _add_error_answers(api)
    if host not in LOOPBACK:
        print(f"monai-cbo label: listening on {host}: anyone who reaches port {port} can read {studies}", flush=True)
    model = conf["adapter"] or ("the bundle's adapter" if bundle else "zero-shot LiteMedSAM")
    print(
        f"monai-cbo label: MONAI Label on http://{host}:{port} with {studies} ({model}; work folder {work})",
        flush=True,
    )
    uvicorn.run(api, host=host, port=port, log_level=log_level, access_log=False)
    return 0
