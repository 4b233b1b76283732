"""The API's error replies. Every error body is ``{"detail": ...}``:

- a :class:`~clearscan.errors.ClearScanError` raised anywhere below a route answers with its own
  status and detail (and headers such as ``WWW-Authenticate`` or ``Retry-After`` when it has
  them): this is the one translation from domain errors to HTTP;
- FastAPI/Starlette's own HTTP errors (an unknown path, a wrong method) keep their status;
- a request that fails validation answers 422 naming the fields;
- anything else is logged and answers 500 without internals.

:class:`ErrorBody` documents that one shape in the OpenAPI document, and :func:`error_responses`
the statuses a route answers with it (``clearscan.api.router`` adds them to every route).

The web pages render the same errors as HTML; the app passes their renderer in as ``page``, so
this module knows nothing of the web package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from clearscan.errors import ClearScanError
from clearscan.storage import BlobError

log = logging.getLogger(__name__)

ErrorPage = Callable[[Request, ClearScanError], Response | None]
"""Renders an error as a web page for a browser's page request; None to answer with JSON."""
NotFoundPage = Callable[[Request], Response | None]
"""Renders "no page here" for a browser asking for an unknown page path; None for JSON."""

INTERNAL_ERROR = "internal error; see the server log"


class ErrorBody(BaseModel):
    """The body of every error reply (4xx and 5xx), validation errors (422) included."""

    detail: str = Field(description="what went wrong, in words; never holds patient identifiers")


ERROR_STATUSES: dict[int, str] = {
    400: "Bad request",
    401: "Not authenticated: no valid bearer token (or wrong username or password)",
    403: "Signed in, but the role may not do this",
    404: "Not found",
    409: "Conflict with the current state (exists already, not finished, last admin...)",
    413: "The request body, or an image decoded from it, is over its limit",
    415: "Unsupported file type",
    422: "The request is invalid: a field fails validation, or the content cannot be processed",
    429: "Too many attempts; retry after the Retry-After header's seconds",
    503: "A model or a service it needs is unavailable now",
}
"""The error statuses the API answers, each with the :class:`ErrorBody` shape."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses=`` entries for `codes`, each answered with :class:`ErrorBody`."""
    return {c: {"model": ErrorBody, "description": ERROR_STATUSES[c]} for c in sorted(codes)}


def error_response(exc: ClearScanError) -> JSONResponse:
    """The API's reply to a domain error: its status, ``{"detail": ...}`` and its headers."""
    headers: dict[str, str] | None = getattr(exc, "headers", None)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def install(
    app: FastAPI, *, page: ErrorPage | None = None, not_found_page: NotFoundPage | None = None
) -> None:
    """Register the error handlers on `app`."""

    @app.exception_handler(ClearScanError)
    async def domain_error(request: Request, exc: ClearScanError) -> Response:
        if isinstance(exc, BlobError):
            _count_storage_error(request)
        if page is not None and (rendered := page(request, exc)) is not None:
            return rendered
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if (
            exc.status_code == 404
            and not_found_page is not None
            and (rendered := not_found_page(request)) is not None
        ):
            return rendered
        headers: dict[str, str] | None = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)


def allowed_methods(request: Request) -> str:
    """Every method some route answers at this path, for a 405's ``Allow`` (Starlette names only
    the first route's, though several routes may share a path)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(r.matches(dict(scope))[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _count_storage_error(request: Request) -> None:
    state = getattr(request.app.state, "clearscan", None)
    if state is not None:
        state.metrics.storage_errors.labels("request").inc()


def describe_validation(errors: Any) -> str:
    """The first few validation errors as one line: ``field: message; ...``."""
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(
            str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form")
        )
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
