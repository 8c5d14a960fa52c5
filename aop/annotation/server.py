"""The annotation page's web server: FastAPI over an :class:`AnnotationSession`, run by uvicorn.

Routes (every answer to a bad request is a 4xx with ``{"error": "<one line>"}``):

=========================================  =========================================================
``GET /``, ``/app.js``, ``/style.css``     the page (package data; no other file is served)
``GET /api/state``                         classes, keys, counts, progress, annotator
``GET /api/next?client=C``                 first unannotated instance for page ``C``
``GET /api/instance/{volume}/{label}``     one instance (``?client=C``)
``GET /api/step/{volume}/{label}?dir=1``   the instance after (``1``) or before (``-1``) it
``GET /api/image/{volume}/{label}.png``    its picture (``?z=`` moves the xy view)
``POST /api/annotate``                     ``{"client", "volume", "label", "class", "previous"}``
``POST /api/skip``                         ``{"client", "volume", "label"}``
``POST /api/undo``                         ``{"client"}``
=========================================  =========================================================

Safety: the page sends instance keys (a volume name and a label id), never paths, and the server
never builds a path from a request. POST bodies must be JSON (so a plain cross-site form cannot
post) and at most ``max_body`` bytes. On a loopback address only requests addressed to that host are
answered (against DNS rebinding); on any other address every request needs the token, given once in
the URL (``/?token=...``, then kept in a cookie), or in the ``X-AOP-Token`` header.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from aop.annotation.session import AnnotationSession, RequestError
from aop.errors import AopError, validation_message

__all__ = ["AnnotationServer", "check_token", "create_app", "is_loopback", "page_url"]

TOKEN_COOKIE = "aop_token"
TOKEN_HEADER = "x-aop-token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'",
    ),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    return host in LOOPBACK or host.startswith("127.")


def check_token(host: str, token: str | None) -> None:
    """Refuse a token that no request could give: empty, or with control characters.

    ``None`` is fine (a random token off loopback, none on it). An empty token would serve the
    page and then refuse every request, so it is one :class:`~aop.errors.AopError` line before
    anything is served (or written).

    >>> check_token("0.0.0.0", "s3cret")
    >>> try:
    ...     check_token("0.0.0.0", "")
    ... except AopError as error:
    ...     print(str(error).split(";")[0])
    token '': empty
    """
    if token is None:
        return
    if not token.strip() or not token.isprintable():
        need = "" if is_loopback(host) else f" (required on {host}, which is not loopback)"
        what = "empty" if not token.strip() else "holds control characters"
        raise AopError(
            f"token {token!r}: {what}; give one line of printable characters, or no token for "
            f"a random one{need}"
        )


def page_url(host: str, port: int, token: str | None = None) -> str:
    """The URL to open: ``http://HOST:PORT/`` (with ``?token=`` when one is needed).

    Examples
    --------
    >>> page_url("127.0.0.1", 8765)
    'http://127.0.0.1:8765/'
    >>> page_url("0.0.0.0", 8765, "abc")
    'http://0.0.0.0:8765/?token=abc'
    """
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


class _Annotate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    client: str = Field(min_length=1, max_length=64)
    volume: str = Field(max_length=512)
    label: int = Field(ge=1)
    class_: str = Field(alias="class", max_length=256)
    previous: str | None = Field(default=None, max_length=256)


class _Skip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: str = Field(min_length=1, max_length=64)
    volume: str = Field(max_length=512)
    label: int = Field(ge=1)


class _Undo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: str = Field(min_length=1, max_length=64)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=status, headers={"cache-control": "no-store"}
    )


class _Guard:
    """ASGI middleware: host check, token, JSON-only bounded bodies, security headers.

    It answers refused requests itself, before the app (and so before anything is read).
    """

    def __init__(
        self, app: Any, *, token: str | None, allowed_hosts: set[str] | None, max_body: int
    ) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # the page uses none: refuse before any check is skipped
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body_receive = receive
        if scope["method"] not in ("GET", "HEAD"):
            body, refusal = await self._read_body(headers, receive)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            body_receive = _replay(body)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, body_receive, send_with_headers)

    def _refusal(self, scope: dict, headers: dict[str, str]) -> JSONResponse | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            return _error(403, f"host {host!r} refused (this server is local)")
        if self.token is None:
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        cookies = {}
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            cookies[name] = value
        offered = [
            *query.get("token", []),
            headers.get(TOKEN_HEADER, ""),
            cookies.get(TOKEN_COOKIE, ""),
        ]
        if any(secrets.compare_digest(t.encode(), self.token.encode()) for t in offered if t):
            return None
        return _error(403, "missing or wrong token (open the URL with ?token= that aop printed)")

    async def _read_body(self, headers: dict[str, str], receive: Any) -> tuple[bytes, Any]:
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return b"", _error(415, "request body must be JSON (content-type application/json)")
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            return b"", _error(400, "content-length is not a number")
        if declared > self.max_body:
            return b"", _error(413, f"request body over {self.max_body} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", _error(413, f"request body over {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8765`` -> ``[::1]``, ``a:80`` -> ``a``)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def create_app(
    session: AnnotationSession,
    *,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
    max_body: int = 16_384,
) -> Any:
    """The ASGI app of the annotation page over ``session``.

    Parameters
    ----------
    session : AnnotationSession
        The data set being annotated.
    token : str, optional
        Required on every request when given (see the module docstring).
    allowed_hosts : set of str, optional
        Accepted host names of the ``Host`` header, any port (``127.0.0.1``, ``localhost``); any
        host when None.
    max_body : int
        Largest request body, in bytes.

    Examples
    --------
    >>> app = create_app(session, token="secret")    # doctest: +SKIP
    >>> uvicorn.run(app, host="0.0.0.0", port=8765)  # doctest: +SKIP
    """
    page = {
        path: (resources.files("aop.annotation").joinpath("static", name).read_bytes(), kind)
        for path, (name, kind) in PAGE_FILES.items()
    }
    api = FastAPI(title="aop annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, validation_message(exc, first=True))

    @api.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def _page_route(path: str) -> None:
        content, kind = page[path]

        def serve(request: Request) -> Response:
            response = Response(content, media_type=kind, headers={"cache-control": "no-cache"})
            offered = request.query_params.get("token")
            if token is not None and offered is not None:
                response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict")
            return response

        api.add_api_route(path, serve, methods=["GET"], include_in_schema=False)

    for path in page:
        _page_route(path)

    def _json(value: Any) -> Response:
        return Response(
            json.dumps(value), media_type="application/json", headers={"cache-control": "no-store"}
        )

    @api.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @api.get("/api/state")
    def state() -> Response:
        return _json(session.state())

    @api.get("/api/next")
    def next_instance(client: str) -> Response:
        return _json({"item": session.next_for(client), "state": session.state()})

    @api.get("/api/instance/{volume}/{label}")
    def instance(volume: str, label: int, client: str) -> Response:
        return _json({"item": session.instance(client, volume, label), "state": session.state()})

    @api.get("/api/step/{volume}/{label}")
    def step(volume: str, label: int, client: str, dir: int = 1) -> Response:  # noqa: A002
        return _json({"item": session.step(client, volume, label, dir), "state": session.state()})

    @api.get("/api/image/{volume}/{name}")
    def image(volume: str, name: str, z: int | None = None) -> Response:
        label, dot, suffix = name.partition(".")
        if dot != "." or suffix != "png" or not label.isdigit():
            raise RequestError(f"unknown picture {name!r} (expected LABEL.png)", 404)
        png = session.picture(volume, int(label), z)
        return Response(
            png, media_type="image/png", headers={"cache-control": "private, max-age=3600"}
        )

    @api.post("/api/annotate")
    def annotate(body: _Annotate) -> Response:
        return _json(
            session.annotate(body.client, body.volume, body.label, body.class_, body.previous)
        )

    @api.post("/api/skip")
    def skip(body: _Skip) -> Response:
        return _json(session.skip(body.client, body.volume, body.label))

    @api.post("/api/undo")
    def undo(body: _Undo) -> Response:
        return _json(session.undo(body.client))

    return _Guard(api, token=token, allowed_hosts=allowed_hosts, max_body=max_body)


class AnnotationServer:
    """uvicorn serving the annotation page of ``session``, in this thread or a background one.

    Parameters
    ----------
    session : AnnotationSession
        The data set being annotated.
    host : str
        Address to listen on; ``127.0.0.1`` by default. Any address that is not loopback requires a
        token (a random one unless ``token`` is given).
    port : int
        Port; 0 picks a free one.
    token : str, optional
        The token to require; on a loopback address a token is required only when given.

    Examples
    --------
    >>> server = AnnotationServer(session).start()   # doctest: +SKIP
    >>> print(server.url)                            # doctest: +SKIP
    >>> server.stop()                                # doctest: +SKIP
    """

    def __init__(
        self,
        session: AnnotationSession,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        max_body: int = 16_384,
    ) -> None:
        check_token(host, token)
        self.session = session
        self.host = host
        if token is None and not is_loopback(host):
            token = secrets.token_urlsafe(24)
        self.token = token
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        # listening from here on: a browser that connects as soon as the URL is printed waits in
        # the backlog until the server accepts, instead of being refused
        self.socket.listen(128)
        self.port = int(self.socket.getsockname()[1])
        allowed = None
        if is_loopback(host):
            shown = f"[{host}]" if ":" in host else host
            # any port: an SSH forward may arrive on another local port
            allowed = {shown, "localhost", "127.0.0.1", "[::1]"}
        app = create_app(session, token=token, allowed_hosts=allowed, max_body=max_body)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL to open, with the token when one is required."""
        return page_url(self.host, self.port, self.token)

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        self._server.run(sockets=[self.socket])

    def start(self) -> AnnotationServer:
        """Serve from a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, daemon=True, name="aop-annotate")
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the annotation server did not start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and release its port."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.socket.close()
        self.session.close()
