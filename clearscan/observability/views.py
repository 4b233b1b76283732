"""Liveness, readiness, health and Prometheus metrics."""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from clearscan import __version__
from clearscan.deps import StateDep
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
    body = {"ready": ok, "database": db_ok, "storage": st_ok, "default_model": default_ok}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/v1/health", summary="Version, uptime, models, database and storage status")
def health(state: StateDep) -> dict[str, object]:
    db_ok, db_err = _db_ok(state)
    st_ok, st_err = _storage_ok(state)
    return {
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 1),
        "database": {"ok": db_ok, "backend": state.engine.dialect.name, "error": db_err},
        "storage": {"ok": st_ok, "backend": "local", "error": st_err},
        "models": [
            {
                "name": e.manifest.name,
                "version": e.manifest.version,
                "available": e.available,
                "loaded": e.model is not None,
                "explainable": e.explainable,
                "error": e.error,
            }
            for e in state.registry.entries()
        ],
        "model_problems": state.registry.problems,
        "default_model": state.settings.default_model,
    }


@router.get("/metrics", summary="Prometheus metrics")
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
    for e in state.registry.entries():
        state.metrics.models_available.labels(e.manifest.name, e.manifest.version).set(
            1 if e.available else 0
        )
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
