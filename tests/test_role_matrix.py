"""Every API route x every role: 401 without credentials, 403 below the route's role, never 401/403
at or above it. A new route must be added to REQUIRED, so none ships unclassified."""

from __future__ import annotations

import pytest

RANK = {"viewer": 1, "clinician": 2, "admin": 3}
REQUIRED = {
    ("POST", "/api/v1/auth/token"): None,
    ("POST", "/api/v1/users"): "admin",
    ("GET", "/api/v1/users"): "admin",
    ("PATCH", "/api/v1/users/{user_id}"): "admin",
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
    ("GET", "/api/v1/images/{image_id}/file"): "viewer",
    ("GET", "/api/v1/images/{image_id}/preview.png"): "viewer",
    ("GET", "/api/v1/predictions/{prediction_id}/heatmap.png"): "viewer",
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
