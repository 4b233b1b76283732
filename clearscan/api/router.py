"""The routers the app includes: the JSON API under ``/api/v1``, health and metrics at the root."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from clearscan.api.deps import get_current_user
from clearscan.api.errors import error_responses
from clearscan.api.routes.api_keys import router as api_keys_router
from clearscan.api.routes.audit import router as audit_router
from clearscan.api.routes.auth import router as auth_router
from clearscan.api.routes.batches import router as batches_router
from clearscan.api.routes.cases import router as cases_router
from clearscan.api.routes.datasets import router as datasets_router
from clearscan.api.routes.health import router as health_router
from clearscan.api.routes.models import router as models_router
from clearscan.api.routes.teams import router as teams_router
from clearscan.api.routes.training import router as training_router

API_PREFIX = "/api/v1"

API_ROUTERS: tuple[APIRouter, ...] = (
    auth_router,
    teams_router,
    api_keys_router,
    models_router,
    cases_router,
    batches_router,
    datasets_router,
    training_router,
    audit_router,
)
"""Mounted under :data:`API_PREFIX`, in this order (the order of the OpenAPI document)."""

ROOT_ROUTERS: tuple[APIRouter, ...] = (health_router,)
"""Mounted at the root: probes (``/healthz``, ``/readyz``), ``/api/v1/health`` and ``/metrics``."""


def include_routers(app: FastAPI) -> None:
    for router in (*API_ROUTERS, *ROOT_ROUTERS):
        document_errors(router)
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    for router in ROOT_ROUTERS:
        app.include_router(router)


def document_errors(router: APIRouter) -> None:
    """Add to each route's ``responses`` the error statuses it can answer, with the one error body
    (:class:`~clearscan.api.errors.ErrorBody`): 401 and 403 behind the sign-in dependency (an API
    key's scopes), 403 behind a role check, 404 with a path id, 422 with any parameter or body
    (this replaces FastAPI's default validation-error schema), 400 (unparsable) and 413 with a
    body. A route names any others itself (``responses=error_responses(409)``); what it names
    wins."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        codes: set[int] = set()
        for d in _walk(route.dependant):
            if d.call is get_current_user:
                codes |= {401, 403}  # 403: an API key without the route's scope
            elif getattr(d.call, "__qualname__", "").startswith("require_roles."):
                codes.add(403)
            if d.path_params:
                codes.add(404)
            if d.path_params or d.query_params or d.header_params or d.body_params:
                codes.add(422)
            if d.body_params:
                codes |= {400, 413}  # a body that does not parse; over the limit
        if (route.methods or set()) & {"POST", "PUT", "PATCH"}:
            codes.add(413)  # the middleware's body limit
        route.responses = {**error_responses(*codes), **route.responses}


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)
