"""create_app(settings): the FastAPI app: API under /api/v1, health, metrics and the web UI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearscan import __version__
from clearscan.audit import service as audit
from clearscan.auth import service as users
from clearscan.auth.service import LoginLimiter
from clearscan.config import ConfigError, Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.inference.runtime import ModelLoadError, auto_parallel_runs, onnx_providers
from clearscan.jobs.service import Handler, InProcessWorker, JobContext
from clearscan.middleware import CoreMiddleware
from clearscan.observability.metrics import Metrics
from clearscan.registry.service import BUNDLED_DIR, ModelRegistry, _cache
from clearscan.registry.store import ModelStore
from clearscan.state import AppState
from clearscan.storage import LocalBlobStore

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def initialise(settings: Settings) -> str | None:
    """Create the data dir, secret and schema; create `admin` on first start.
    Returns the generated admin password when one was generated (print it once)."""
    settings.check_production()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with make_session_factory(engine)() as db:
            return users.ensure_admin(db=db, password=settings.admin_password)
    finally:
        engine.dispose()


def model_store(settings: Settings) -> ModelStore:
    return ModelStore(
        settings.models_dir or settings.data_dir / "models",
        max_package_bytes=int(settings.max_model_upload_mb * 2**20),
    )


def check_device(device: str) -> None:
    """CLEARSCAN_DEVICE=cuda on a machine without the CUDA execution provider stops start-up
    (a quiet fall-back to the CPU would hide a tenfold slow-down)."""
    try:
        onnx_providers(device)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None


def build_registry(
    settings: Settings, sessions: sessionmaker[Session] | None = None
) -> ModelRegistry:
    dirs = [BUNDLED_DIR, model_store(settings).root]
    check_device(settings.device)
    _cache.resize(int(settings.model_cache_mb * 2**20))
    registry = ModelRegistry(
        dirs,
        sessions=sessions,
        threads=settings.intra_op_threads,
        device=settings.device,
        parallel_runs=settings.parallel_runs or auto_parallel_runs(settings.device),
    )
    registry.load_all()
    return registry


def create_app(settings: Settings | None = None, *, initialised: bool = False) -> FastAPI:
    """Build the app. `initialised=True` when the caller already ran `initialise(settings)`."""
    settings = settings or Settings()
    if not initialised:
        initialise(settings)
    engine = create_db_engine(settings.sqlalchemy_url)
    sessions = make_session_factory(engine)
    metrics = Metrics()
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blobs=LocalBlobStore(settings.blob_dir),
        registry=build_registry(settings, sessions),
        store=model_store(settings),
        metrics=metrics,
        limiter=LoginLimiter(
            max_failures=settings.login_max_failures, window_seconds=settings.login_window_seconds
        ),
        secret=settings.resolved_secret_key,
    )
    _audit_unavailable_models(state)
    state.jobs = InProcessWorker(sessions, job_handlers(state))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert state.jobs is not None
        state.jobs.start()  # also picks up jobs queued before a restart
        try:
            yield
        finally:
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

    from clearscan.audit.views import router as audit_router
    from clearscan.auth.views import router as auth_router
    from clearscan.cases.views import router as cases_router
    from clearscan.datasets.views import router as datasets_router
    from clearscan.observability.views import router as health_router
    from clearscan.registry.views import router as models_router
    from clearscan.training.views import router as training_router

    for r in (
        auth_router,
        models_router,
        cases_router,
        datasets_router,
        training_router,
        audit_router,
    ):
        app.include_router(r, prefix=API_PREFIX)
    app.include_router(health_router)
    _mount_docs(app)
    _mount_web(app)
    _error_handlers(app)

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
        metrics=metrics,
        max_body=settings.max_upload_bytes,
        hsts=settings.secure_cookies == "always",
        large_bodies={
            f"{API_PREFIX}/models": int(settings.max_model_upload_mb * 2**20),
            f"{API_PREFIX}/datasets": int(settings.max_dataset_upload_mb * 2**20),
            "/datasets": int(settings.max_dataset_upload_mb * 2**20),  # the web import form
        },
    )
    return app


def job_handlers(state: AppState) -> dict[str, Handler]:
    """The job kinds this process runs (the in-process worker; Celery workers later)."""
    from clearscan.training.evaluation import EVAL_KIND, run_evaluation
    from clearscan.training.runs import TRAIN_KIND, run_training

    def train(ctx: JobContext) -> dict[str, Any]:
        return run_training(
            ctx,
            sessions=state.sessions,
            blobs=state.blobs,
            store=state.store,
            on_registered=lambda name, version: state.registry.discover(),
        )

    def evaluate(ctx: JobContext) -> dict[str, Any]:
        return run_evaluation(
            ctx, sessions=state.sessions, blobs=state.blobs, registry=state.registry
        )

    return {TRAIN_KIND: train, EVAL_KIND: evaluate}


def _audit_unavailable_models(state: AppState) -> None:
    """A version that failed to load at start-up is an audit event as well as a log line."""
    failed = [e for n in state.registry.names() for e in state.registry.versions(n) if e.error]
    if not failed:
        return
    with state.sessions() as db:
        audit.record(
            db,
            audit.RequestContext(actor="system"),
            *[
                audit.Entry(
                    "model.unavailable",
                    outcome="failure",
                    object_type="model",
                    object_id=e.manifest.ref,
                    details={"error": (e.error or "")[:500]},
                )
                for e in failed
            ],
        )


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
    try:
        from clearscan.web.views import mount as mount_web
    except ImportError:  # pragma: no cover - the web package is always shipped
        log.warning("web UI not available")
        return
    mount_web(app)


def _error_handlers(app: FastAPI) -> None:
    from clearscan.web.views import browser_not_found

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and (page := browser_not_found(request)) is not None:
            return page
        return JSONResponse(
            {"detail": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    _ = HTTPException  # FastAPI's HTTPException subclasses Starlette's


def _describe(errors: Any) -> str:
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(
            str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form")
        )
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
