"""The routers the app includes: the JSON API under ``/api/v1``, health and metrics at the root."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from clearscan.api.routes.audit import router as audit_router
from clearscan.api.routes.auth import router as auth_router
from clearscan.api.routes.cases import router as cases_router
from clearscan.api.routes.datasets import router as datasets_router
from clearscan.api.routes.health import router as health_router
from clearscan.api.routes.models import router as models_router
from clearscan.api.routes.training import router as training_router

API_PREFIX = "/api/v1"

API_ROUTERS: tuple[APIRouter, ...] = (
    auth_router,
    models_router,
    cases_router,
    datasets_router,
    training_router,
    audit_router,
)
"""Mounted under :data:`API_PREFIX`, in this order (the order of the OpenAPI document)."""

ROOT_ROUTERS: tuple[APIRouter, ...] = (health_router,)
"""Mounted at the root: probes (``/healthz``, ``/readyz``), ``/api/v1/health`` and ``/metrics``."""


def include_routers(app: FastAPI) -> None:
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    for router in ROOT_ROUTERS:
        app.include_router(router)
