"""What every request to ``monai-cbo label`` passes before the app sees it, and the one rule for names and paths.

The label server runs next to a researcher's studies, so whatever arrives over HTTP is treated as hostile:

- **names**: an image id, a label tag or an upload's file name is a *plain name* (:func:`plain_name`): no path
  separator, no control character, not starting with ``.`` (so never ``.`` or ``..``), at most
  :data:`NAME_MAX` characters. A path the server builds from one is resolved and must lie inside the folder it
  belongs to (:func:`inside`): the studies folder for images and labels, the work folder for everything else.
- **requests** (:class:`Guard`, an ASGI middleware in front of MONAI Label): a ``Host`` header that is not this
  server's (DNS rebinding) is refused; an ``Origin`` that is neither this server nor one the user allowed is
  refused before anything runs (a web page open in the user's browser cannot drive the server); with a token,
  a request without ``Authorization: Bearer <token>`` is refused; a body larger than the limit, or one of
  unknown length, is refused before it is read.
- **numbers**: ``params`` is a JSON object whose numbers are finite (:func:`parse_params`, :func:`check_finite`).

This module needs neither MONAI Label nor FastAPI: it is tested on its own.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "NAME_MAX",
    "UPLOAD_SUFFIXES",
    "Guard",
    "Refused",
    "check_finite",
    "inside",
    "normalise_origin",
    "parse_params",
    "plain_name",
    "upload_name",
    "upload_suffix",
]

NAME_MAX = 128  #: the longest image id, label tag or upload name accepted
#: what an upload may be: NIfTI alone. NRRD and MetaImage headers may name a detached data file anywhere on the
#: disk (``data file:``, ``ElementDataFile``), which an uploaded header must not make the server read.
UPLOAD_SUFFIXES = (".nii.gz", ".nii")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Refused(ValueError):
    """A request the server will not serve: ``status`` (4xx) and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def plain_name(value: Any, what: str) -> str:
    """``value`` if it is a plain name (see the module docstring), else :class:`Refused` (422) naming ``what``."""
    if not isinstance(value, str) or not value:
        raise Refused(422, f"{what} is missing or not a string ({value!r}); give a plain name")
    problem = None
    if len(value) > NAME_MAX:
        problem = f"is {len(value)} characters long (at most {NAME_MAX})"
    elif "/" in value or "\\" in value:
        problem = "holds a path separator"
    elif _CONTROL.search(value):
        problem = "holds a control character"
    elif value.startswith("."):
        problem = "starts with '.'"
    elif value != value.strip():
        problem = "starts or ends with white space"
    if problem:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise Refused(
            422,
            f"{what} {shown!r} {problem}; give a plain name (letters, digits and _ - . ; no path, not starting "
            f"with '.', at most {NAME_MAX} characters)",
        )
    return value


def inside(path: str | Path, root: str | Path, what: str) -> Path:
    """``path`` resolved (links followed), if it lies inside ``root``; else :class:`Refused` (403)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise Refused(403, f"{what} would lie outside the server's folder {base.name}/; the request is refused")
    return resolved


def upload_name(filename: Any) -> str:
    """The last component of an upload's file name: MONAI Label's clients send the local path they read
    (``/tmp/x/label.nii.gz``, ``C:\\x\\label.nii.gz``), which says nothing about where the server writes."""
    return re.split(r"[/\\]", str(filename or ""))[-1]


def upload_suffix(filename: Any, what: str) -> str:
    """The suffix of an uploaded file's name (one of :data:`UPLOAD_SUFFIXES`), else :class:`Refused` (415)."""
    name = plain_name(upload_name(filename), f"the file name of the {what}")
    for suffix in UPLOAD_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise Refused(
        415,
        f"the {what} {name!r} is not a NIfTI file; upload .nii.gz or .nii (NRRD and MetaImage headers can name "
        "another file to read, so the server does not take them over HTTP: convert them first)",
    )


def check_finite(value: Any, where: str) -> Any:
    """``value`` (parsed JSON) unchanged if every number in it is finite, else :class:`Refused` (422)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(422, f"{where} holds {value}; every number must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            check_finite(item, f"{where}[{n}]")
    return value


def _no_constant(name: str) -> Any:
    raise Refused(422, f"params holds {name}; every number must be finite (JSON has no NaN or Infinity)")


def parse_params(text: str | bytes | None, what: str = "params") -> dict[str, Any]:
    """A request's ``params`` form field: a JSON object of finite numbers (empty: ``{}``)."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return {}
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except Refused:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise Refused(422, f"{what} is not valid JSON ({err}); send a JSON object") from err
    if not isinstance(value, dict):
        raise Refused(422, f"{what} must be a JSON object, got a {type(value).__name__}; send {{...}}")
    return check_finite(value, what)


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` of an origin a user names (``--allow-origin``); ValueError if it is not one."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"--allow-origin {origin!r} is not an origin; give scheme://host[:port], e.g. http://localhost:3000"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _host_name(host: str) -> str:
    """The host name of a ``Host`` header value (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware in front of the MONAI Label app; see the module docstring.

    Args:
        app: the ASGI app it guards.
        token: the bearer token every request must carry (None: no token; the server is then loopback-only).
        origins: the browser origins allowed to call the server (``scheme://host[:port]``); a request from this
            server's own origin (the OHIF viewer it serves) is always allowed.
        hosts: the host names a ``Host`` header may name (None: any, for a server reached by other names).
        max_body: the largest request body in bytes.
        public: paths served without the token (the login endpoints a client asks first).
    """

    def __init__(
        self,
        app,
        token: str | None = None,
        origins: Iterable[str] = (),
        hosts: Iterable[str] | None = LOOPBACK_HOSTS,
        max_body: int = 1 << 30,
        public: Iterable[str] = ("/auth/", "/auth/token"),
    ) -> None:
        self.app, self.token = app, token or None
        self.origins = {normalise_origin(o) for o in origins}
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        self.max_body, self.public = int(max_body), set(public)

    def refusal(self, scope) -> tuple[int, str, dict[str, str]] | None:
        """Why this request is refused (status, message, extra headers), or None to let it through."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method, path = scope.get("method", "GET"), scope.get("path", "")
        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return (
                421,
                f"Host {host!r} is not this server's name ({', '.join(sorted(self.hosts))}); a page that reaches "
                "the server under another name is refused",
                {},
            )
        origin = headers.get("origin")
        if origin is not None:
            own = {f"{scope.get('scheme', 'http')}://{host.lower()}"}
            if origin.lower() not in self.origins | own:
                return (
                    403,
                    f"requests from the web origin {origin!r} are refused; start the server with --allow-origin "
                    f"{origin} to let pages of that origin use it",
                    {},
                )
        preflight = method == "OPTIONS" and "access-control-request-method" in headers and origin is not None
        if self.token and not preflight and path not in self.public:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return (
                    401,
                    "this server needs its token: send the header 'Authorization: Bearer <token>' (in 3D Slicer: "
                    "log in with any user name and the token as the password)",
                    {"www-authenticate": "Bearer"},
                )
        if method in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    return 411, "send the request body with a Content-Length (chunked uploads are refused)", {}
            elif not length.strip().isdigit():
                return 400, f"Content-Length {length!r} is not a number of bytes", {}
            elif int(length) > self.max_body:
                return (
                    413,
                    f"the request body has {int(length):,} bytes; this server takes at most {self.max_body:,} "
                    "(start it with a larger --max-upload-mb)",
                    {},
                )
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # the app serves none: refused before any check could be skipped
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan: the app's start and stop
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refused
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
