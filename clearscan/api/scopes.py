"""Which API-key scope a route needs. A request signed with an API key (not a person's token or
session) may go on only when its key holds that scope:

- ``predict``: the analysis routes (:data:`PREDICT_ROUTES`: ``POST /predict``, batch submission
  and cancelling a batch the key's account submitted);
- ``read``: every other GET that is not admin-only (cases, images, heatmaps, models, datasets,
  batches, training runs, evaluations);
- ``admin``: the admin-only routes (user and key management, audit, model uploads and roll-outs,
  dataset imports, training); no key ever holds it;
- ``write``: any other change (reviews): a person's act; no key ever holds it.

The role checks still apply after the scope: a ``predict`` key of a viewer account is refused
by the route's role like the viewer would be."""

from __future__ import annotations

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import Scope

PREDICT_ROUTES = frozenset(
    {
        ("POST", "/api/v1/predict"),
        ("POST", "/api/v1/batches"),
        ("POST", "/api/v1/batches/{batch_id}/cancel"),
    }
)
READ_METHODS = frozenset({"GET", "HEAD"})

_role_checks: dict[int, tuple[object, frozenset[str]]] = {}


def register_role_check(check: object, roles: frozenset[str]) -> None:
    """Note a role-check dependency (``deps.require_roles``) and the roles it lets through, so
    the admin-only routes can be told apart by their dependencies."""
    _role_checks[id(check)] = (check, roles)  # holding `check` keeps its id from being reused


_cache: dict[tuple[str, str], str] = {}


def route_template(scope: Scope) -> str | None:
    """The full path template of the request's matched route (``/api/v1/cases/{case_id}``);
    FastAPI records it for routes included under a prefix."""
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        fmt = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
        if isinstance(fmt, str) and fmt:
            return fmt
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def required_scope(method: str, scope: Scope) -> str:
    """The scope a request with `method` and ASGI `scope` needs (see the module doc)."""
    route = scope.get("route")
    template = route_template(scope)
    if not isinstance(route, APIRoute) or template is None:
        return "admin"  # nothing unclassified is let through
    cache_key = (method, template)
    found = _cache.get(cache_key)
    if found is None:
        found = _classify(method, template, route)
        _cache[cache_key] = found
    return found


def _classify(method: str, template: str, route: APIRoute) -> str:
    calls = [d.call for d in _walk(route.dependant)]
    roles = [_role_checks[id(c)][1] for c in calls if id(c) in _role_checks]
    if any(allowed == {"admin"} for allowed in roles):
        return "admin"
    if (method, template) in PREDICT_ROUTES:
        return "predict"
    if method in READ_METHODS:
        return "read"
    return "write"


def _walk(dependant: Dependant) -> list[Dependant]:
    out = [dependant]
    for sub in dependant.dependencies:
        out.extend(_walk(sub))
    return out
