"""Liveness, readiness, health and Prometheus metrics."""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from clearscan import __version__
from clearscan.api.deps import StateDep
from clearscan.api.errors import error_responses
from clearscan.state import AppState
from clearscan.storage import BlobError

router = APIRouter(tags=["health"])


def _db_ok(state: AppState) -> tuple[bool, str | None]:
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True, None
    except Exception as exc:  # any driver error means not ready
        return False, type(exc).__name__


def _storage_ok(state: AppState) -> tuple[bool, str | None]:
    try:
        state.blobs.check_writable()
        return True, None
    except BlobError as exc:
        state.metrics.storage_errors.labels("check").inc()
        return False, str(exc)


@router.get("/healthz", include_in_schema=True, summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="Readiness: DB reachable, storage writable, default model loaded")
def readyz(state: StateDep) -> JSONResponse:
    db_ok, _ = _db_ok(state)
    st_ok, _ = _storage_ok(state)
    try:
        default_ok = state.registry.get(state.settings.default_model).available
    except Exception:
        default_ok = False
    ok = db_ok and st_ok and default_ok
    body = {
        "ready": ok,
        "database": db_ok,
        "storage": st_ok,
        "storage_backend": state.blobs.backend,
        "default_model": default_ok,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/api/v1/health",
    summary="Version, uptime, status (ok or degraded), models, database and storage status",
)
def health(state: StateDep) -> dict[str, object]:
    """`status` is "degraded" while the database or storage fails, a model package was rejected
    or a model version cannot load; `unavailable_models` names each such version and why, and
    `model_problems` says the same in words (with the rejected packages)."""
    db_ok, db_err = _db_ok(state)
    st_ok, st_err = _storage_ok(state)
    models = state.registry.entries()  # loads what serves first: a failure shows below
    unavailable = state.registry.unavailable()
    problems = state.registry.problems + [
        f"{e.manifest.ref} is unavailable: {e.error}" for e in unavailable
    ]
    return {
        "status": "ok" if db_ok and st_ok and not problems else "degraded",
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 1),
        "database": {"ok": db_ok, "backend": state.engine.dialect.name, "error": db_err},
        "storage": {"ok": st_ok, "backend": state.blobs.backend, "error": st_err},
        "models": [
            {
                "name": e.manifest.name,
                "version": e.manifest.version,
                "available": e.available,
                "loaded": e.model is not None,
                "explainable": e.explainable,
                "error": e.error,
            }
            for e in models
        ],
        "unavailable_models": [
            {"name": e.manifest.name, "version": e.manifest.version, "error": e.error}
            for e in unavailable
        ],
        "model_problems": problems,
        "default_model": state.settings.default_model,
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **error_responses(401),
    },
)
def metrics(request: Request, state: StateDep) -> Response:
    token = state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            return JSONResponse(
                {"detail": "metrics need the bearer token set in CLEARSCAN_METRICS_TOKEN"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    state.metrics.models_available.clear()  # a version removed since the last scrape goes
    for e in [*state.registry.entries(), *state.registry.unavailable()]:
        state.metrics.models_available.labels(e.manifest.name, e.manifest.version).set(
            1 if e.available else 0
        )
    state.metrics.storage_writable.set(1 if _storage_ok(state)[0] else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
