"""create_app(settings): the FastAPI app: API under /api/v1, health, metrics and the web UI.
app_from_env(): the same, built from the environment, for each process of a multi-process
server (`clearscan serve --workers N`, or a process manager running uvicorn)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from clearscan import __version__
from clearscan.api import errors as api_errors
from clearscan.api.cookies import CookiePolicy
from clearscan.api.middleware import ANALYSIS, UPLOAD, Authenticator, CoreMiddleware
from clearscan.api.ratelimit import RequestThrottle
from clearscan.api.router import API_PREFIX, API_ROUTERS, include_routers
from clearscan.auth.service import NotAuthenticated
from clearscan.bootstrap import (
    audit_anchoring,
    audit_check,
    backup_schedule,
    build_state,
    flush_denials,
    initialise,
    staging_sweep,
)
from clearscan.config import Settings
from clearscan.errors import ClearScanError
from clearscan.registry.cache import ModelCache
from clearscan.state import AppState

log = logging.getLogger(__name__)

__all__ = ["API_PREFIX", "RATE_LIMITED", "app_from_env", "create_app"]

RATE_LIMITED: dict[tuple[str, str], str] = {
    ("POST", f"{API_PREFIX}/predict"): "predict",
    ("POST", "/analyze"): "predict",
    ("POST", f"{API_PREFIX}/batches"): "predict",  # one batch counts as one request
    ("POST", "/batches"): "predict",
    ("POST", f"{API_PREFIX}/auth/token"): "login",
    ("POST", "/login"): "login",
}
"""The requests the rate limits count, by rule (see CLEARSCAN_RATE_LIMIT_*)."""

GUARDED: dict[tuple[str, str], str] = {
    ("POST", f"{API_PREFIX}/models"): UPLOAD,
    ("POST", f"{API_PREFIX}/datasets"): UPLOAD,
    ("POST", "/datasets"): UPLOAD,  # the web import form
    ("POST", f"{API_PREFIX}/batches"): UPLOAD,
    ("POST", "/batches"): UPLOAD,
    ("POST", f"{API_PREFIX}/predict"): ANALYSIS,
    ("POST", "/analyze"): ANALYSIS,
}
"""The requests whose body can be large: answered 401 before the body is read when they carry
no valid credentials; uploads also count against CLEARSCAN_MAX_CONCURRENT_UPLOADS (analyses are
capped while they decode and run, by CLEARSCAN_MAX_CONCURRENT_ANALYSES)."""


def app_from_env() -> FastAPI:
    """The app of one server process, from CLEARSCAN_* alone (a uvicorn factory:
    ``uvicorn clearscan.app:app_from_env --factory``). Start-up checks the data dir, schema and
    first admin, which is quick when they exist: initialise them once before starting many
    processes (`clearscan serve --workers N` does)."""
    from clearscan.observability.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def create_app(
    settings: Settings | None = None,
    *,
    initialised: bool = False,
    model_cache: ModelCache | None = None,
) -> FastAPI:
    """Build the app. `initialised=True` when the caller already ran `initialise(settings)`;
    `model_cache` shares loaded model versions with other apps of the process (default: its own)."""
    settings = settings or Settings()
    if not initialised:
        initialise(settings)
    state = build_state(settings, model_cache=model_cache)
    audit_verify = audit_check(state)
    audit_anchor = audit_anchoring(state)  # the head, every minute by default
    backups = backup_schedule(state)  # None unless CLEARSCAN_BACKUP_SCHEDULE_HOURS is set
    sweep = staging_sweep(state)  # raw uploads of ended jobs that their runner left behind

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert state.jobs is not None
        state.jobs.start()  # also picks up jobs queued before a restart
        audit_verify.start()  # exports the chain's verdict for the audit alert
        sweep.start()
        audit_anchor.start()
        if backups is not None:
            backups.start()
        try:
            yield
        finally:
            audit_verify.stop()
            sweep.stop()
            audit_anchor.stop()
            flush_denials(state)  # the anonymous denials counted since the last summary
            if backups is not None:
                backups.stop()
            state.jobs.stop()
            state.metrics.close()
            state.engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="ClearScan",
        version=__version__,
        description="Self-hosted medical-imaging AI: upload, predict, explain, review. "
        "Not for clinical use unless a model's card says otherwise.",
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
    )
    app.state.clearscan = state

    _document_rate_limits()
    include_routers(app)
    _mount_docs(app)
    _mount_web(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Idempotency-Key"],
        )
    app.add_middleware(
        CoreMiddleware,
        metrics=state.metrics,
        max_body=settings.max_upload_bytes,
        hsts=CookiePolicy.of(settings).hsts,
        large_bodies={
            f"{API_PREFIX}/models": int(settings.max_model_upload_mb * 2**20),
            f"{API_PREFIX}/datasets": int(settings.max_dataset_upload_mb * 2**20),
            "/datasets": int(settings.max_dataset_upload_mb * 2**20),  # the web import form
        },
        throttle=_throttle(state),
        refusal_page=_refusal_page,
        guarded=GUARDED,
        authenticate=_authenticator(state),
        uploads=state.uploads,
    )
    return app


def _authenticator(state: AppState) -> Authenticator:
    """The 401 of a request whose headers carry no valid credentials, or None (the API's own
    check, in a worker thread: it reads the database). A database failure lets the request
    through to its route, which answers it."""
    import anyio.to_thread
    from sqlalchemy.exc import SQLAlchemyError

    from clearscan.api.deps import has_credentials, refuse_anonymous

    def check(scope: Scope) -> ClearScanError | None:
        # a copy: nothing leaks into the real request's state; the guarded paths are literal
        # routes, so the path is the route's template (the denial metrics' label)
        own = {"request_id": scope.get("state", {}).get("request_id")}
        request = Request({**scope, "state": own, "route": _LiteralRoute(scope["path"])})
        try:
            with state.sessions() as db:
                if has_credentials(request, db, state):
                    return None
                return refuse_anonymous(request, db)
        except SQLAlchemyError:
            return None

    async def authenticate(scope: Scope) -> ClearScanError | None:
        return await anyio.to_thread.run_sync(check, scope)

    return authenticate


@dataclass(frozen=True)
class _LiteralRoute:
    path: str


def _throttle(state: AppState) -> RequestThrottle | None:
    """The rate limits of the RATE_LIMITED requests."""
    limits = state.rate_limits
    if limits is None:
        return None
    return RequestThrottle(
        limits,
        RATE_LIMITED,
        secret=state.secret,
        sessions=state.sessions,
        session_cookie=CookiePolicy.of(state.settings).session,
    )


def _document_rate_limits() -> None:
    """The API routes the rate limits count answer 429 too (before the routers are included,
    which documents each route's error statuses)."""
    for router in API_ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute) and any(
                (m, API_PREFIX + route.path) in RATE_LIMITED for m in route.methods or ()
            ):
                route.responses.setdefault(429, api_errors.error_responses(429)[429])


def _refusal_page(scope: Scope, error: ClearScanError) -> Response | None:
    """A refusal the middleware answers (429, 503) as the web's error page for a page request
    (the guarded and rate-limited paths outside the API are the web's forms); a form posted
    without a session goes to sign in, as the page itself would send it."""
    if scope.get("path", "").startswith(f"{API_PREFIX}/"):
        return None
    from clearscan.web.errors import ErrorPage, sentence
    from clearscan.web.templating import redirect, render_page

    if isinstance(error, NotAuthenticated):
        return redirect("/login")

    page = ErrorPage(code=error.status_code, title=error.title, message=sentence(error.detail))
    return render_page(Request(scope), page, status=error.status_code)


def _mount_docs(app: FastAPI) -> None:
    import swagger_ui_bundle

    app.mount(
        "/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "",
            title="ClearScan API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _mount_web(app: FastAPI) -> None:
    """The web pages, and the error handlers: one reply per error, a web page for a browser's
    page request (the web package decides which requests those are) and JSON otherwise."""
    from clearscan.web.errors import browser_not_found, error_page
    from clearscan.web.router import mount as mount_web

    mount_web(app)
    api_errors.install(app, page=error_page, not_found_page=browser_not_found)
