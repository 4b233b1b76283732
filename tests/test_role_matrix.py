"""Every API route x every role: 401 without credentials, 403 below the route's role, never 401/403
at or above it. A new route must be added to REQUIRED, so none ships unclassified."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

RANK = {"viewer": 1, "clinician": 2, "admin": 3}
REQUIRED = {
    ("POST", "/api/v1/auth/token"): None,
    ("POST", "/api/v1/users"): "admin",
    ("GET", "/api/v1/users"): "admin",
    ("PATCH", "/api/v1/users/{user_id}"): "admin",
    ("POST", "/api/v1/teams"): "admin",
    ("GET", "/api/v1/teams"): "viewer",
    ("POST", "/api/v1/service-accounts"): "admin",
    ("GET", "/api/v1/service-accounts"): "admin",
    ("POST", "/api/v1/api-keys"): "admin",
    ("GET", "/api/v1/api-keys"): "admin",
    ("DELETE", "/api/v1/api-keys/{key_id}"): "admin",
    ("GET", "/api/v1/models"): "viewer",
    ("GET", "/api/v1/models/{name}"): "viewer",
    ("POST", "/api/v1/models"): "admin",
    ("GET", "/api/v1/models/{name}/versions"): "viewer",
    ("POST", "/api/v1/models/{name}/versions/{version}/activate"): "admin",
    ("POST", "/api/v1/models/{name}/rollback"): "admin",
    ("GET", "/api/v1/models/{name}/rollout"): "viewer",
    ("PUT", "/api/v1/models/{name}/rollout"): "admin",
    ("GET", "/api/v1/models/{name}/rollout/report"): "admin",
    ("POST", "/api/v1/predict"): "clinician",
    ("GET", "/api/v1/cases"): "viewer",
    ("GET", "/api/v1/cases/{case_id}"): "viewer",
    ("POST", "/api/v1/predictions/{prediction_id}/review"): "clinician",
    ("POST", "/api/v1/predictions/{prediction_id}/findings/{finding}/review"): "clinician",
    ("GET", "/api/v1/images/{image_id}/file"): "viewer",
    ("GET", "/api/v1/images/{image_id}/preview.png"): "viewer",
    ("GET", "/api/v1/images/{image_id}/original"): "admin",
    ("GET", "/api/v1/predictions/{prediction_id}/heatmap.png"): "viewer",
    ("GET", "/api/v1/predictions/{prediction_id}/mask.png"): "viewer",
    ("GET", "/api/v1/predictions/{prediction_id}/segmentation.dcm"): "viewer",
    ("GET", "/api/v1/predictions/{prediction_id}/report.dcm"): "viewer",
    ("GET", "/api/v1/predictions/{prediction_id}/secondary-capture.dcm"): "viewer",
    ("POST", "/api/v1/batches"): "clinician",
    ("GET", "/api/v1/batches"): "viewer",
    ("GET", "/api/v1/batches/{batch_id}"): "viewer",
    ("POST", "/api/v1/batches/{batch_id}/cancel"): "clinician",
    ("POST", "/api/v1/datasets"): "admin",
    ("GET", "/api/v1/datasets"): "viewer",
    ("GET", "/api/v1/datasets/{dataset_id}"): "viewer",
    ("GET", "/api/v1/datasets/{dataset_id}/items/{idx}/image.png"): "viewer",
    ("GET", "/api/v1/datasets/{dataset_id}/features/preview"): "viewer",
    ("GET", "/api/v1/dataset-imports/{import_id}"): "admin",
    ("POST", "/api/v1/training-runs"): "admin",
    ("GET", "/api/v1/training-runs"): "viewer",
    ("GET", "/api/v1/training-runs/{run_id}"): "viewer",
    ("POST", "/api/v1/training-runs/{run_id}/cancel"): "admin",
    ("POST", "/api/v1/evaluations"): "admin",
    ("GET", "/api/v1/evaluations"): "viewer",
    ("GET", "/api/v1/evaluations/compare"): "viewer",
    ("GET", "/api/v1/evaluations/{eval_id}"): "viewer",
    ("GET", "/api/v1/evaluations/{eval_id}/report.html"): "viewer",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/audit/verify"): "admin",
    ("GET", "/api/v1/audit/export"): "admin",
    ("GET", "/api/v1/health"): None,
}


def _api_routes(app):
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/api/v1"):
            for method in ops:
                yield method.upper(), path


def test_every_api_route_is_classified(app):
    assert set(_api_routes(app)) == set(REQUIRED)


@pytest.mark.parametrize("role", [None, "viewer", "clinician", "admin"])
def test_role_matrix(client, make_user, admin_headers, role):
    headers = {} if role is None else admin_headers if role == "admin" else make_user(role)
    for (method, path), need in REQUIRED.items():
        url = (
            path.replace("{user_id}", "999999")
            .replace("{name}", "pneumonia-cxr")
            .replace("{case_id}", "missing")
            .replace("{prediction_id}", "missing")
            .replace("{image_id}", "missing")
            .replace("{dataset_id}", "missing")
            .replace("{idx}", "0")
            .replace("{run_id}", "missing")
            .replace("{eval_id}", "missing")
            .replace("{batch_id}", "missing")
            .replace("{import_id}", "missing")
            .replace("{key_id}", "999999")
        )
        r = client.request(method, url, headers=headers)
        if need is None:
            assert r.status_code not in (401, 403), (method, path, r.status_code)
        elif role is None:
            assert r.status_code == 401, (method, path, r.status_code)
        elif RANK[role] < RANK[need]:
            assert r.status_code == 403, (method, path, role, r.status_code)
        else:
            assert r.status_code not in (401, 403), (method, path, role, r.status_code)
        assert r.status_code < 500, (method, path, role, r.text)
        assert "detail" in r.json() or r.status_code < 400


API_KEY_PREDICT_ROUTES = {
    ("POST", "/api/v1/predict"),
    ("POST", "/api/v1/batches"),
    ("POST", "/api/v1/batches/{batch_id}/cancel"),
}


def _any_url(path):
    """A path template with every id filled in with one that names nothing."""
    import re

    fixed = {"user_id": "999999", "key_id": "999999", "name": "pneumonia-cxr", "idx": "0"}
    return re.sub(r"\{(\w+)\}", lambda m: fixed.get(m.group(1), "missing"), path)


@pytest.mark.parametrize("scope", ["read", "predict"])
def test_api_key_matrix(client, admin_headers, scope):
    """Every API route with a `read` or a `predict` key of a clinician service account: never
    401 or 500; 403 for the admin routes and wherever the key lacks the scope."""
    r = client.post(
        "/api/v1/service-accounts",
        headers=admin_headers,
        json={"name": "router", "role": "clinician"},
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/api-keys",
        headers=admin_headers,
        json={"account": "router", "name": "matrix", "scopes": [scope]},
    )
    assert r.status_code == 201, r.text
    headers = {"X-API-Key": r.json()["key"]}
    for (method, path), need in REQUIRED.items():
        r = client.request(method, _any_url(path), headers=headers)
        assert r.status_code < 500, (method, path, scope, r.text)
        if need is None:
            continue
        assert r.status_code != 401, (method, path, scope, r.text)
        if need == "admin":
            allowed = False
        elif (method, path) in API_KEY_PREDICT_ROUTES:
            allowed = scope == "predict"
        else:
            allowed = method == "GET" and scope == "read"
        if allowed:
            assert r.status_code != 403, (method, path, scope, r.text)
        else:
            assert r.status_code == 403, (method, path, scope, r.status_code)
            assert "scope" in r.json()["detail"], (method, path, scope)


def test_disabled_user_token_stops_working(client, admin_headers, make_user):
    h = make_user("clinician")
    users = client.get("/api/v1/users", headers=admin_headers).json()["items"]
    uid = users[-1]["id"]
    assert client.get("/api/v1/cases", headers=h).status_code == 200
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"]
    assert client.get("/api/v1/cases", headers=h).status_code == 401


def test_garbage_and_expired_tokens_401(client, settings):
    from clearscan.auth.security import create_access_token

    assert client.get("/api/v1/cases", headers={"Authorization": "Bearer nope"}).status_code == 401
    expired = create_access_token(secret=settings.resolved_secret_key, user_id=1, minutes=-1)
    r = client.get("/api/v1/cases", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    forged = create_access_token(secret="another-secret-" * 3, user_id=1, minutes=5)
    assert (
        client.get("/api/v1/cases", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )


# --- ownership: every route with a path id, tried by members of another team ------------------

OWNED_PARAMS = {
    "case_id",
    "image_id",
    "prediction_id",
    "dataset_id",
    "ref",  # the web's dataset page: /datasets/{ref}
    "idx",  # an item of a dataset: owned through the dataset
    "batch_id",
    "run_id",
    "eval_id",
    "import_id",
    "finding",  # a finding of a prediction: owned through the prediction
}
"""Path parameters naming something a team owns (a case, an image, a prediction, a dataset, a
batch, a training run, an evaluation, a dataset import)."""
NOT_OWNED_PARAMS = {
    "user_id": "users are managed by admins and belong to no one team",
    "key_id": "API keys are managed by admins",
    "name": "models are shared by every team",
    "version": "models are shared by every team",
}
WEB_NEED = {
    ("POST", "/cases/{case_id}/predictions/{prediction_id}/review"): "clinician",
    ("POST", "/cases/{case_id}/predictions/{prediction_id}/findings/{finding}/review"): "clinician",
    ("POST", "/batches/{batch_id}/cancel"): "clinician",
    ("POST", "/training/{run_id}/cancel"): "admin",
}
"""The web pages with a path id that need more than a signed-in viewer (GET pages need that)."""
MISSING = {
    "case_id": "00000000-0000-4000-8000-000000000000",
    "image_id": "00000000-0000-4000-8000-000000000001",
    "prediction_id": "00000000-0000-4000-8000-000000000002",
    "dataset_id": "0" * 32,
    "ref": "0" * 32,
    "idx": "0",
    "batch_id": "1" * 32,
    "run_id": "2" * 32,
    "eval_id": "3" * 32,
    "import_id": "4" * 32,
    "finding": "0",
}


def _route_table(app):
    """(method, path) of every route the app serves, included routers' routes flattened (a
    route of an included router is listed with its full path)."""

    def walk(routes):
        for route in routes:
            found = getattr(route, "effective_candidates", None)
            if found is not None:  # an included router (FastAPI >= 0.12x)
                yield from walk(found() if callable(found) else found)
            elif getattr(route, "methods", None) and getattr(route, "path", None):
                for method in route.methods:
                    yield method, route.path

    yield from walk(app.routes)


def _routes_with_ids(app):
    """(method, path, is_api, path parameters) of every route of the app with a path id."""
    import re

    seen = set()
    for method, path in sorted(_route_table(app)):
        if "{" not in path or method == "HEAD" or (method, path) in seen:
            continue
        seen.add((method, path))
        params = set(re.findall(r"{(\w+)(?::[^}]*)?}", path))
        yield method, path, path.startswith("/api/"), params


def _fill(path, ids):
    import re

    return re.sub(r"{(\w+)(?::[^}]*)?}", lambda m: ids[m.group(1)], path)


def test_every_path_parameter_is_classified(app):
    """A new route with a path id must say whether a team owns what it names."""
    for method, path, _, params in _routes_with_ids(app):
        unknown = params - OWNED_PARAMS - set(NOT_OWNED_PARAMS)
        assert not unknown, f"classify {unknown} of {method} {path} in OWNED_PARAMS or NOT_OWNED"


@pytest.mark.parametrize("role", ["clinician", "viewer"])
def test_ownership_matrix(app, client, admin_headers, role):
    """Every API and web route with a path id naming something of the team `general`, tried by
    a member of another team: 404, the same reply as for a missing id (403 where the role is
    below the route's, as for any id). Admins, in `general`, open the same ids."""
    from tests.conftest import PASSWORD
    from tests.teams.helpers import general_world
    from tests.web.test_pages import csrf_of, web_login

    world = general_world(app, client, admin_headers)
    headers = world.other[role]
    browser = TestClient(app, raise_server_exceptions=False)
    assert web_login(browser, world.names[role], PASSWORD).status_code == 303
    csrf = csrf_of(browser.get("/cases").text)
    tried = 0
    for method, path, is_api, params in _routes_with_ids(app):
        if not params <= OWNED_PARAMS:
            continue
        url, missing_url = _fill(path, world.ids), _fill(path, MISSING)
        if is_api:
            need = REQUIRED[(method, path)]
            body = None
            if path.endswith("/review"):
                body = {"accept": True} if "/findings/" in path else {"agree": True}
            r = client.request(method, url, headers=headers, json=body)
            r_missing = client.request(method, missing_url, headers=headers, json=body)
        else:
            need = WEB_NEED.get((method, path), "viewer" if method == "GET" else None)
            assert need is not None, f"add {method} {path} to WEB_NEED"
            form = {"csrf_token": csrf, "verdict": "agree"} if method == "POST" else None
            r = browser.request(method, url, data=form, follow_redirects=False)
            r_missing = browser.request(method, missing_url, data=form, follow_redirects=False)
        tried += 1
        if RANK[role] < RANK[need]:
            assert r.status_code == 403, (method, path, role, r.status_code)
            continue
        assert r.status_code == 404, (method, path, role, r.status_code, r.text[:300])
        assert r_missing.status_code == 404, (method, path, r_missing.status_code)
        if is_api:
            text = r.text
            for key in params:
                text = text.replace(world.ids[key], MISSING[key])
            assert text == r_missing.text, (method, path)
    browser.close()
    assert tried >= 20, tried  # every owned kind, API and web
    # the same ids are real: the admin (in general) opens them
    for path in (
        "cases/{case_id}",
        "datasets/{dataset_id}",
        "batches/{batch_id}",
        "training-runs/{run_id}",
        "evaluations/{eval_id}",
    ):
        r = client.get(_fill(f"/api/v1/{path}", world.ids), headers=admin_headers)
        assert r.status_code == 200, (path, r.text)
