"""Liveness, readiness, health and Prometheus metrics."""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from clearscan import __version__
from clearscan.api.deps import SessionDep, StateDep, user_from_request
from clearscan.api.errors import error_responses, problem
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


HEALTH_DESCRIPTION = """`status` is "ok", or "degraded" while the database or storage fails, a
model package was rejected or a model version cannot load. Anonymous callers get only
`{"status": ...}`. Signed-in callers (a bearer token, or the browser session cookie) also get the
version, uptime, database and storage (backend, error), every model version (`models`),
`unavailable_models` (each version that cannot serve and why), `model_problems` (the same in
words, with the rejected packages) and `default_model`. Probes use `/healthz` and `/readyz`."""


def _signed_in(request: Request, db: SessionDep, state: StateDep) -> bool:
    """Whether the request carries a valid bearer token or session cookie. A database that
    cannot check it means anonymous: health still answers, with the status alone."""
    try:
        return user_from_request(request, db, state) is not None
    except SQLAlchemyError:
        return False


@router.get(
    "/api/v1/health",
    summary="Status (ok or degraded); version, uptime, models, database and storage when signed in",
    description=HEALTH_DESCRIPTION,
)
def health(request: Request, db: SessionDep, state: StateDep) -> dict[str, object]:
    db_ok, db_err = _db_ok(state)
    st_ok, st_err = _storage_ok(state)
    models = state.registry.entries()  # loads what serves first: a failure shows below
    unavailable = state.registry.unavailable()
    problems = state.registry.problems + [
        f"{e.manifest.ref} is unavailable: {e.error}" for e in unavailable
    ]
    status = "ok" if db_ok and st_ok and not problems else "degraded"
    if not (db_ok and _signed_in(request, db, state)):
        return {"status": status}
    return {
        "status": status,
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
            return problem(
                401,
                "metrics need the bearer token set in CLEARSCAN_METRICS_TOKEN",
                instance=request.url.path,
                headers={"WWW-Authenticate": "Bearer"},
            )
    state.metrics.models_available.clear()  # a version removed since the last scrape goes
    for e in [*state.registry.entries(), *state.registry.unavailable()]:
        state.metrics.models_available.labels(e.manifest.name, e.manifest.version).set(
            1 if e.available else 0
        )
    state.metrics.storage_writable.set(1 if _storage_ok(state)[0] else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
