"""One error root, one translation: a ClearScanError raised below a route answers with its status
and an RFC 9457 problem details body; anything unexpected answers 500 without internals."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clearscan.api import errors as api_errors
from clearscan.auth.service import LoginFailed, LoginThrottled
from clearscan.errors import ClearScanError, Conflict, NotFound, TooLarge, Unavailable
from clearscan.jobs.service import JobConflict, JobError, JobNotFound
from clearscan.storage import BlobIntegrityError, BlobNotFound

SECRET = "/srv/clearscan/secret-internal-path"


def _app() -> FastAPI:
    app = FastAPI()
    api_errors.install(app)

    @app.get("/boom/{kind}")
    def boom(kind: str) -> dict[str, str]:
        errors: dict[str, Exception] = {
            "not-found": NotFound("case 42 not found"),
            "conflict": JobConflict("job 7 already succeeded"),
            "throttled": LoginThrottled(30),
            "login": LoginFailed("incorrect username or password"),
            "missing-blob": BlobNotFound("stored data is missing: blob ab not found"),
            "custom": type("Teapot", (ClearScanError,), {"status_code": 418})("short and stout"),
            "crash": RuntimeError(f"cannot open {SECRET}"),
        }
        raise errors[kind]

    @app.get("/items/{n}")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def bare() -> TestClient:
    return TestClient(_app(), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("kind", "status", "detail"),
    [
        ("not-found", 404, "case 42 not found"),
        ("conflict", 409, "job 7 already succeeded"),
        ("throttled", 429, "too many failed logins; try again in 30 s"),
        ("login", 401, "incorrect username or password"),
        ("missing-blob", 410, "stored data is missing: blob ab not found"),
        ("custom", 418, "short and stout"),
    ],
)
def test_domain_error_answers_its_status_and_detail(bare, kind, status, detail):
    r = bare.get(f"/boom/{kind}")
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    title = {404: "Not Found", 409: "Conflict", 429: "Too Many Requests", 401: "Unauthorized"}
    title |= {410: "Gone", 418: "I'm a Teapot"}
    assert r.json() == {
        "type": "about:blank",
        "title": title[status],
        "status": status,
        "detail": detail,
        "instance": f"/boom/{kind}",
    }


def test_domain_error_headers_travel(bare):
    assert bare.get("/boom/throttled").headers["retry-after"] == "30"
    assert bare.get("/boom/login").headers["www-authenticate"] == "Bearer"
    assert "retry-after" not in bare.get("/boom/not-found").headers


def test_unexpected_exception_is_500_without_internals(bare):
    r = bare.get("/boom/crash")
    assert r.status_code == 500
    assert r.json()["detail"] == api_errors.INTERNAL_ERROR and r.json()["status"] == 500
    assert SECRET not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text


def test_framework_errors_keep_the_same_body(bare):
    r = bare.get("/nowhere")
    assert r.status_code == 404 and r.json()["detail"] == "Not Found"
    assert r.headers["content-type"] == "application/problem+json"
    r = bare.get("/items/seven")
    assert r.status_code == 422 and r.json()["detail"].startswith("n: ")
    assert r.json()["title"] == HTTPStatus(422).phrase and r.json()["status"] == 422
    [problem] = r.json()["errors"]
    assert problem["field"] == "n" and "integer" in problem["message"]


def test_error_classes_say_their_status():
    """The hierarchy, not the routers, decides the status (no translation left to a view)."""
    assert JobError("x").status_code == 400
    assert JobNotFound("x").status_code == 404 and isinstance(JobNotFound("x"), NotFound)
    assert JobConflict("x").status_code == 409 and isinstance(JobConflict("x"), Conflict)
    assert BlobIntegrityError("x").status_code == 500
    assert isinstance(BlobNotFound("x"), Unavailable)
    assert TooLarge("x").status_code == 413


def test_in_the_real_app_errors_are_json(app, client, admin_headers):
    """The composed app: a domain error raised in an API route (an unknown case) and an
    unexpected failure both answer JSON, also when a browser asks."""

    @app.get("/api/v1/test-crash")
    def crash() -> None:
        raise RuntimeError(f"cannot open {SECRET}")

    browser = {**admin_headers, "Accept": "text/html,application/xhtml+xml,*/*"}
    for headers in (admin_headers, browser):
        r = client.get("/api/v1/cases/no-such-case", headers=headers)
        assert r.status_code == 404 and r.json()["detail"] == "case no-such-case not found"
        assert r.json()["instance"] == "/api/v1/cases/no-such-case"
        r = client.get("/api/v1/test-crash", headers=headers)
        assert r.status_code == 500 and SECRET not in r.text
        assert r.json()["detail"] == api_errors.INTERNAL_ERROR
