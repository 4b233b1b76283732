"""The API's error replies. Every error body is an RFC 9457 problem details object, sent as
``application/problem+json``: ``{"type": "about:blank", "title": "Not Found", "status": 404,
"detail": "case 42 not found", "instance": "/api/v1/cases/42"}``. ``detail`` is the sentence a
person reads; a validation error (422) adds ``errors``, one ``{"field", "message"}`` per problem.

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
from http import HTTPStatus
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


PROBLEM_JSON = "application/problem+json"
"""The media type of every error reply (RFC 9457)."""


class FieldProblem(BaseModel):
    """One invalid field of a request that failed validation."""

    field: str = Field(description="dotted path of the field, e.g. `teams.0`; `request` if none")
    message: str


class ErrorBody(BaseModel):
    """The body of every error reply (4xx and 5xx), validation errors (422) included: an RFC 9457
    problem details object."""

    type: str = Field(
        default="about:blank",
        description="a URI naming the problem type; `about:blank`: the status says it all",
    )
    title: str = Field(description="the HTTP status phrase, e.g. `Not Found`")
    status: int = Field(description="the HTTP status code, repeated from the response")
    detail: str = Field(description="what went wrong, in words; never holds patient identifiers")
    instance: str | None = Field(
        default=None, description="the request path the problem occurred on"
    )
    errors: list[FieldProblem] | None = Field(
        default=None, description="422 only: each invalid field and what is wrong with it"
    )


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem_body(
    status: int, detail: str, *, instance: str | None = None, **extensions: Any
) -> dict[str, Any]:
    """The RFC 9457 body for `status` and `detail` (plus any extension members)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    return body


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    """An error reply: `status` with the problem details body."""
    body = problem_body(status, detail, instance=instance, **extensions)
    return ProblemResponse(body, status_code=status, headers=headers)


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
    """The OpenAPI ``responses=`` entries for `codes`, each answered with :class:`ErrorBody`
    (as ``application/problem+json``: :func:`install` moves them there in the document)."""
    return {c: {"model": ErrorBody, "description": ERROR_STATUSES[c]} for c in sorted(codes)}


def error_response(exc: ClearScanError, instance: str | None = None) -> ProblemResponse:
    """The API's reply to a domain error: its status, the problem body and its headers."""
    headers: dict[str, str] | None = getattr(exc, "headers", None)
    return problem(exc.status_code, exc.detail, instance=instance, headers=headers)


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
        return error_response(exc, request.url.path)

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
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(exc.status_code, detail, instance=request.url.path, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        return problem(
            422,
            describe_validation(errors),
            instance=request.url.path,
            errors=[{"field": _field(e), "message": str(e.get("msg", "invalid"))} for e in errors],
        )

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, INTERNAL_ERROR, instance=request.url.path)

    _document_problem_media_type(app)


def _document_problem_media_type(app: FastAPI) -> None:
    """Error responses are documented with ``model=ErrorBody``, which FastAPI files under
    ``application/json``; move them to ``application/problem+json``, the type they are sent as."""
    generate = app.openapi
    ref = "#/components/schemas/ErrorBody"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for code, reply in operation.get("responses", {}).items():
                    content = reply.get("content", {})
                    json_content = content.get("application/json", {})
                    if str(code)[:1] in "45" and json_content.get("schema", {}).get("$ref") == ref:
                        content[PROBLEM_JSON] = content.pop("application/json")
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def _field(error: Any) -> str:
    """A validation error's field as a dotted path (without FastAPI's `body`/`query` prefix)."""
    loc = ".".join(
        str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form")
    )
    return loc or "request"


def describe_validation(errors: Any) -> str:
    """The first few validation errors as one line: ``field: message; ...``."""
    return "; ".join(f"{_field(e)}: {e.get('msg', 'invalid')}" for e in list(errors)[:5])
