"""create_app(settings): the FastAPI app: API under /api/v1, health, metrics and the web UI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from clearscan import __version__
from clearscan.api import errors as api_errors
from clearscan.api.middleware import CoreMiddleware
from clearscan.api.router import API_PREFIX, include_routers
from clearscan.bootstrap import audit_check, build_state, initialise
from clearscan.config import Settings
from clearscan.registry.cache import ModelCache

log = logging.getLogger(__name__)

__all__ = ["API_PREFIX", "create_app"]


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert state.jobs is not None
        state.jobs.start()  # also picks up jobs queued before a restart
        audit_verify.start()  # exports the chain's verdict for the audit alert
        try:
            yield
        finally:
            audit_verify.stop()
            state.jobs.stop()

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

    include_routers(app)
    _mount_docs(app)
    _mount_web(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(
        CoreMiddleware,
        metrics=state.metrics,
        max_body=settings.max_upload_bytes,
        hsts=settings.secure_cookies == "always",
        large_bodies={
            f"{API_PREFIX}/models": int(settings.max_model_upload_mb * 2**20),
            f"{API_PREFIX}/datasets": int(settings.max_dataset_upload_mb * 2**20),
            "/datasets": int(settings.max_dataset_upload_mb * 2**20),  # the web import form
        },
    )
    return app


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
