"""`GET /api/v1/health`: the status for anyone, the details (versions, models, storage) only for a
signed-in caller; the probes stay open."""

from __future__ import annotations

from tests.web.test_pages import web_login

DETAILS = {
    "version",
    "uptime_s",
    "database",
    "storage",
    "models",
    "unavailable_models",
    "model_problems",
    "default_model",
}


def test_anonymous_callers_get_the_status_only(client):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    bad = client.get("/api/v1/health", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 200 and bad.json() == {"status": "ok"}
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["ready"] is True


def test_signed_in_callers_get_the_details(client, admin_headers, viewer_headers, app):
    for headers in (admin_headers, viewer_headers):
        body = client.get("/api/v1/health", headers=headers).json()
        assert set(body) == {"status", *DETAILS} and body["status"] == "ok"
    from fastapi.testclient import TestClient

    from tests.conftest import ADMIN_PASSWORD

    with TestClient(app) as browser:  # the session cookie
        assert web_login(browser, "admin", ADMIN_PASSWORD).status_code == 303
        assert set(browser.get("/api/v1/health").json()) == {"status", *DETAILS}


def test_openapi_says_who_gets_the_details(client):
    op = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/health"]["get"]
    assert "Anonymous callers get only" in op["description"]
    assert "when signed in" in op["summary"]
