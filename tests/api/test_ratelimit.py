"""Rate limits on predictions and sign-ins: 429 with Retry-After and the API's error body (the web
error page for a page request), answered by the middleware before the body is read; counted per
user and per address; documented in the OpenAPI; shared by apps on one database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clearscan.app import create_app
from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, PASSWORD, login, pg_available, pg_database, png_bytes
from tests.web.test_pages import csrf_of, web_login

PREDICT = "/api/v1/predict"


def _client(settings: Settings, model_cache: Any, **limits: int) -> TestClient:
    off = {
        "rate_limit_predict_per_user": 0,
        "rate_limit_predict_per_address": 0,
        "rate_limit_login_per_address": 0,
    }
    app = create_app(settings.model_copy(update={**off, **limits}), model_cache=model_cache)
    return TestClient(app, raise_server_exceptions=False)


def _user(c: TestClient, admin: dict[str, str], name: str, role: str = "clinician") -> None:
    r = c.post(
        "/api/v1/users", headers=admin, json={"username": name, "password": PASSWORD, "role": role}
    )
    assert r.status_code == 201, r.text


def _refused(r: Any, what: str) -> int:
    """The reply is the rate limit's 429: error body, Retry-After; returns the seconds."""
    assert r.status_code == 429, r.text
    retry = int(r.headers["retry-after"])
    assert r.json()["detail"] == f"too many {what}; try again in {retry} s"
    assert r.json()["status"] == 429 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["connection"] == "close" and r.headers["x-request-id"]
    return retry


def test_predictions_are_limited_per_user(settings, model_cache):
    with _client(settings, model_cache, rate_limit_predict_per_user=2) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        _user(c, admin, "ann")
        _user(c, admin, "bob")
        ann, bob = login(c, "ann", PASSWORD), login(c, "bob", PASSWORD)
        image = [("file", ("x.png", png_bytes(), "image/png"))]
        assert c.post(PREDICT, headers=ann, files=image).status_code == 200
        assert c.post(PREDICT, headers=ann).status_code == 422  # refused later, yet counted
        retry = _refused(c.post(PREDICT, headers=ann, files=image), "predictions")
        assert 29 <= retry <= 30  # 2 a minute: one more every 30 s
        assert c.post(PREDICT, headers=bob, files=image).status_code == 200  # another user
        text = c.get("/metrics").text
    samples = {
        (s.name, s.labels.get("route"), s.labels.get("status")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("clearscan_http_requests_total", PREDICT, "429")] == 1


def test_predictions_are_limited_per_address_even_without_credentials(settings, model_cache):
    with _client(settings, model_cache, rate_limit_predict_per_address=3) as c:
        statuses = [c.post(PREDICT).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        _refused(c.post(PREDICT), "predictions")
        assert c.get("/api/v1/health").status_code == 200  # other routes are not limited


def test_sign_in_attempts_are_limited_per_address(settings, model_cache):
    with _client(settings, model_cache, rate_limit_login_per_address=2) as c:
        login(c, "admin", ADMIN_PASSWORD)
        form = {"username": "admin", "password": ADMIN_PASSWORD}
        assert c.post("/api/v1/auth/token", data=form).status_code == 200
        _refused(c.post("/api/v1/auth/token", data=form), "sign-in attempts")
        # the web form shares the rule and the count: the refusal is the web's error page
        page = c.post("/login", data={**form, "csrf_token": "x"}, headers={"accept": "text/html"})
        assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
        assert "Too many requests" in page.text and "try again in" in page.text.lower()
        assert int(page.headers["retry-after"]) >= 1


def test_web_analyses_are_limited_per_signed_in_user(settings, model_cache):
    with _client(settings, model_cache, rate_limit_predict_per_user=1) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        _user(c, admin, "cat")
        assert web_login(c, "cat", PASSWORD).status_code == 303
        token = csrf_of(c.get("/analyze").text)
        form = {"csrf_token": token, "explain": "on"}
        image = [("file", ("x.png", png_bytes(), "image/png"))]
        first = c.post("/analyze", data=form, files=image, follow_redirects=False)
        assert first.status_code == 303, first.text
        again = c.post("/analyze", data=form, files=image, follow_redirects=False)
        assert again.status_code == 429 and "text/html" in again.headers["content-type"]
        assert int(again.headers["retry-after"]) == 60
        # the same user through the API token shares the count
        cat = login(c, "cat", PASSWORD)
        _refused(c.post(PREDICT, headers=cat, files=image), "predictions")


def test_limited_routes_document_429(settings, model_cache):
    with _client(settings, model_cache) as c:
        paths = c.get("/api/v1/openapi.json").json()["paths"]
    for path in (PREDICT, "/api/v1/auth/token"):
        reply = paths[path]["post"]["responses"]["429"]
        assert reply["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    assert "429" not in paths["/api/v1/cases"]["get"]["responses"]


def test_refused_before_the_body_is_read(settings, model_cache):
    """The middleware answers without calling receive(): a refused upload is never read."""
    app = create_app(
        settings.model_copy(update={"rate_limit_predict_per_address": 1}),
        model_cache=model_cache,
    )
    reads = 0

    async def call() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PREDICT,
            "raw_path": PREDICT.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", b"10000000"), (b"content-type", b"image/png")],
            "client": ("10.9.9.9", 1234),
            "server": ("test", 80),
            "app": app,
        }
        await app(scope, receive, send)
        return sent

    assert asyncio.run(call())[0]["status"] == 401  # allowed: the app answers it
    reads = 0
    sent = asyncio.run(call())
    assert sent[0]["status"] == 429 and reads == 0
    assert (b"retry-after", b"60") in sent[0]["headers"]


@pytest.fixture
def pg_settings(settings: Settings) -> Iterator[Settings]:
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        yield pg


def test_apps_on_one_database_share_the_counts(pg_settings, model_cache, tmp_path):
    """Two apps (as two processes would) on one PostgreSQL database: the database store is
    chosen by default, and failures or requests counted by one refuse on the other."""
    a_settings = pg_settings.model_copy(
        update={"login_max_failures": 2, "rate_limit_login_per_address": 5}
    )
    a = create_app(a_settings, model_cache=model_cache)
    b = create_app(
        a_settings.model_copy(update={"data_dir": tmp_path / "b"}), model_cache=model_cache
    )
    assert a.state.clearscan.limiter.store.backend == "database"
    try:
        with TestClient(a) as ca, TestClient(b) as cb:
            wrong = {"username": "admin", "password": "wrong-password-1"}
            assert ca.post("/api/v1/auth/token", data=wrong).status_code == 401
            assert cb.post("/api/v1/auth/token", data=wrong).status_code == 401
            right = {"username": "admin", "password": ADMIN_PASSWORD}
            throttled = ca.post("/api/v1/auth/token", data=right)  # failures of both count
            assert throttled.status_code == 429
            assert throttled.json()["detail"].startswith("too many failed logins")
            for _ in range(2):  # the 4th and 5th attempt from this address
                assert cb.post("/api/v1/auth/token", data=right).status_code == 429
            _refused(ca.post("/api/v1/auth/token", data=right), "sign-in attempts")
    finally:
        for app in (a, b):
            app.state.clearscan.engine.dispose()


def test_batch_submissions_count_against_the_prediction_limit(settings, model_cache):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes())
    archive = [("file", ("b.zip", buf.getvalue(), "application/zip"))]
    with _client(settings, model_cache, rate_limit_predict_per_user=1) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        assert c.post("/api/v1/batches", headers=admin, files=archive).status_code == 202
        _refused(c.post("/api/v1/batches", headers=admin, files=archive), "predictions")
        image = [("file", ("x.png", png_bytes(), "image/png"))]
        _refused(c.post(PREDICT, headers=admin, files=image), "predictions")  # one budget
