"""Error pages. A domain error (:class:`~clearscan.errors.ClearScanError`) that leaves a page
handler is rendered here as the error page, with its status; the API's handler answers every
other request with JSON. Page handlers therefore raise or let through domain errors and catch
only those they answer by showing a form again with a message.

Two exceptions belong to the pages themselves: :class:`LoginRequired` (a redirect to the
sign-in page) and :class:`PageError` (an error page the web decides on, such as a refused CSRF
token)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from clearscan.cases.service import NotFound as CaseNotFound
from clearscan.datasets.service import DatasetNotFound
from clearscan.errors import ClearScanError
from clearscan.jobs.service import JobNotFound
from clearscan.registry.errors import ModelNotFound
from clearscan.web.present.page import Page
from clearscan.web.templating import redirect, render_page

PAGE_TAG = "web-page"  # the tag of every page route: errors there are answered with a page

# How a page names what it shows when that does not exist (the domain's message names the id).
_MISSING: dict[type[ClearScanError], tuple[str, str]] = {
    CaseNotFound: ("Case not found", "This case does not exist."),
    DatasetNotFound: ("Dataset not found", "No dataset with this id or name exists."),
    ModelNotFound: ("Model not found", "No model of this name is installed."),
    # the only jobs a page looks up by id are training runs
    JobNotFound: ("Training run not found", "This training run does not exist."),
}


class LoginRequired(Exception):
    """No valid session: the page redirects to /login?next=..."""

    def __init__(self, next_url: str | None) -> None:
        super().__init__("login required")
        self.next_url = next_url


class PageError(ClearScanError):
    """An error page with this status, title and message (403, 404, ...)."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.title = title


@dataclass(frozen=True, kw_only=True)
class ErrorPage(Page):
    template = "error.html"
    code: int
    title: str
    message: str


def page_router() -> APIRouter:
    """The router of a page family: left out of the OpenAPI schema, its routes tagged so that
    errors raised below them are answered with an error page."""
    return APIRouter(include_in_schema=False, tags=[PAGE_TAG])


def sentence(text: str) -> str:
    """A domain message ("version 2.0 not found") as a sentence to show: capitalised."""
    return text[:1].upper() + text[1:]


def is_page_request(request: Request) -> bool:
    """Whether the request was routed to a page (not to the API, /static or the docs)."""
    route = request.scope.get("route")
    return PAGE_TAG in (getattr(route, "tags", None) or ())


def error_page(request: Request, exc: ClearScanError) -> Response | None:
    """The error page for `exc` raised by a page handler; None for any other request (the API
    answers those with its JSON body)."""
    return _render(request, exc) if is_page_request(request) else None


def _render(request: Request, exc: ClearScanError) -> Response:
    if isinstance(exc, PageError):
        title, message = exc.title, exc.detail
    else:
        words = next((w for cls, w in _MISSING.items() if isinstance(exc, cls)), None)
        title, message = words or (exc.title, sentence(exc.detail))
    page = ErrorPage(code=exc.status_code, title=title, message=message)
    ws = getattr(request.state, "web_session", None)
    response = render_page(request, page, ws=ws, status=exc.status_code)
    for name, value in (getattr(exc, "headers", None) or {}).items():  # Retry-After of a 503
        response.headers[name] = value
    return response


def browser_not_found(request: Request) -> Response | None:
    """An HTML 404 page for a browser that asks for a page path that does not exist; None for
    anything else (API, static files, docs, clients that do not ask for HTML)."""
    path = request.url.path
    if path.startswith(("/api/", "/static/", "/docs")) or "text/html" not in request.headers.get(
        "accept", ""
    ):
        return None
    page = ErrorPage(code=404, title="Page not found", message="There is no page at this address.")
    return render_page(request, page, status=404)


async def login_required(request: Request, exc: Exception) -> RedirectResponse:
    assert isinstance(exc, LoginRequired)
    target = exc.next_url
    url = "/login" if not target or target == "/" else f"/login?{urlencode({'next': target})}"
    return redirect(url)


async def page_error(request: Request, exc: Exception) -> Response:
    """The handler of :class:`PageError`, which only page handlers raise."""
    assert isinstance(exc, PageError)
    return _render(request, exc)
