"""One pure-ASGI middleware for every request: request id, upload size limit (413 before the body
is read), rate limits (429 before the body is read), security headers, Prometheus metrics and a
one-line access log without query strings.

Requests whose body can be large (uploads of models, datasets and batches, analyses: the
``guarded`` routes) are checked further before their body is read: without credentials that
name an active user they are answered 401 (so an anonymous client cannot make the server parse
gigabytes of multipart body before the route's auth dependency runs), and uploads beyond the
per-process cap on concurrent uploads are answered 503 with ``Retry-After``. The route still
checks the user's role as for any request.

API replies (under ``/api/v1/``) that set no Cache-Control of their own are sent
`Cache-Control: no-store` and `Pragma: no-cache`: case and dataset JSON name patients' images
and references. Files with patient data set the same headers themselves
(:class:`~clearscan.api.responses.PHIResponse`)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clearscan.api.cookies import HSTS
from clearscan.api.errors import PROBLEM_JSON, error_response, problem_body
from clearscan.api.ratelimit import RequestThrottle
from clearscan.api.responses import NO_STORE
from clearscan.errors import ClearScanError, TooLarge
from clearscan.inference.admission import Admission
from clearscan.observability.logging import request_id_var
from clearscan.observability.metrics import Metrics

log = logging.getLogger("clearscan.access")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI's bootstrap is an inline script; only /docs gets it.
CSP_DOCS = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
API_PATHS = "/api/v1/"
NO_STORE_HEADERS = [(k.lower().encode(), v.encode()) for k, v in NO_STORE.items()]


class BodyTooLarge(TooLarge):
    """The request body is over the upload limit of its path (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the upload limit of {limit / 2**20:g} MB")


RefusalPage = Callable[[Scope, ClearScanError], Response | None]
"""Renders a refusal as a web page when the request was for a page; None to answer with the
API's JSON body."""

Authenticator = Callable[[Scope], Awaitable[ClearScanError | None]]
"""The refusal (401) of a request without credentials that name an active user, or None when it
has them (headers and cookies only: the body is not read)."""

UPLOAD = "upload"
ANALYSIS = "analysis"


class CoreMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body: int,
        hsts: bool = False,
        large_bodies: dict[str, int] | None = None,
        throttle: RequestThrottle | None = None,
        refusal_page: RefusalPage | None = None,
        guarded: Mapping[tuple[str, str], str] | None = None,
        authenticate: Authenticator | None = None,
        uploads: Admission | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.large_bodies = large_bodies or {}  # exact paths (model uploads) with their own limit
        self.hsts = hsts
        self.throttle = throttle
        self.refusal_page = refusal_page
        # (method, path) of the requests with large bodies: UPLOAD or ANALYSIS
        self.guarded = dict(guarded or {})
        self.authenticate = authenticate
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _RID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500
        path: str = scope["path"]
        csp = CSP_DOCS if path.startswith(("/docs", "/redoc")) else CSP
        api = path.startswith(API_PATHS)

        recorded = False
        refused = False

        def record() -> None:
            # Called just before the last body chunk goes out, so a client that has its reply
            # already sees the request counted.
            nonlocal recorded
            if recorded:
                return
            recorded = True
            elapsed = time.perf_counter() - start
            # a rate-limited path is a literal route (no path parameters): its own label
            route = path if refused else _route_of(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info(
                "%s %s %s",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [
                    (b"x-request-id", rid.encode()),
                    (b"content-security-policy", csp.encode()),
                ]
                extra += BASE_HEADERS
                if self.hsts:
                    extra.append((b"strict-transport-security", HSTS.encode()))
                own = list(message.get("headers", []))
                if api and not any(name.lower() == b"cache-control" for name, _ in own):
                    extra += NO_STORE_HEADERS
                message["headers"] = own + extra
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()
            await send(message)

        try:
            length = headers.get(b"content-length")
            limit = self.large_bodies.get(path, self.max_body)
            if length is not None and length.isdigit() and int(length) > limit:
                await _json(send_wrapper, 413, BodyTooLarge(limit).detail)
                return
            if self.throttle is not None and self.throttle.applies(scope):
                refusal = await self.throttle.check(scope)
                if refusal is not None:
                    refused = True
                    await self._refuse(scope, receive, send_wrapper, refusal)
                    return
            kind = self.guarded.get((scope["method"], path))
            authenticate = self.authenticate if kind is not None else None
            anonymous = await authenticate(scope) if authenticate is not None else None
            if anonymous is not None:
                refused = True
                await self._refuse(scope, receive, send_wrapper, anonymous)
                return
            if kind == UPLOAD and self.uploads is not None:
                if not self.uploads.try_acquire():
                    refused = True
                    await self._refuse(scope, receive, send_wrapper, self.uploads.busy())
                    return
                try:
                    await self.app(scope, self._limited(receive, limit), send_wrapper)
                finally:
                    self.uploads.release()
                return
            await self.app(scope, self._limited(receive, limit), send_wrapper)
        finally:
            record()
            request_id_var.reset(token)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: ClearScanError
    ) -> None:
        """Answer `error` without reading the body: the error page for a page request, else the
        API's body; the connection closes (the unread body cannot be skipped)."""
        response = self.refusal_page(scope, error) if self.refusal_page else None
        if response is None:
            response = error_response(error, scope.get("path"))
        for name, value in (getattr(error, "headers", None) or {}).items():
            response.headers[name] = value
        response.headers["connection"] = "close"
        await response(scope, receive, send)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


def _route_of(scope: Scope) -> str:
    """The matched route's template (e.g. /api/v1/cases/{case_id}): bounded metric labels."""
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):  # FastAPI records the full template of included routes
        fmt = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
        if isinstance(fmt, str) and fmt:
            return fmt
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


async def _json(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps(problem_body(status, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
