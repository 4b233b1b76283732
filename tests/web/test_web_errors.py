"""Domain errors that leave a page are rendered as the error page (with the signed-in top bar);
the same errors under /api/ keep the API's JSON body."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from clearscan.cases import service as cases
from clearscan.errors import Conflict, NotFound
from clearscan.web.errors import error_page, sentence

SignIn = Callable[[str], TestClient]


def test_a_domain_error_on_a_page_is_an_error_page(
    sign_in: SignIn, client, admin_headers, monkeypatch: pytest.MonkeyPatch
):
    def locked(**_: object) -> None:
        raise Conflict("case is locked by an export")

    monkeypatch.setattr(cases, "view_case", locked)
    viewer = sign_in("viewer")
    r = viewer.get("/cases/some-case")
    assert r.status_code == 409 and 'data-testid="error-page"' in r.text
    assert "<h1>Conflict</h1>" in r.text and "Case is locked by an export" in r.text
    assert 'data-testid="current-role">viewer<' in r.text  # the top bar of the signed-in user
    api = client.get("/api/v1/cases/some-case", headers=admin_headers)
    assert api.status_code == 404 and api.json()["detail"] == "case some-case not found"


def test_pages_name_what_is_missing(sign_in: SignIn):
    admin = sign_in("admin")
    for path, title in (
        ("/cases/nope", "Case not found"),
        ("/models/nope", "Model not found"),
        ("/datasets/nope", "Dataset not found"),
        ("/training/nope", "Training run not found"),
    ):
        r = admin.get(path)
        assert r.status_code == 404 and f"<h1>{title}</h1>" in r.text, path
        assert "nope" not in r.text.split('data-testid="error-text">')[1].split("<")[0]


def test_error_page_answers_page_routes_only():
    request = Request({"type": "http", "method": "GET", "path": "/api/v1/x", "headers": []})
    assert error_page(request, NotFound("x not found")) is None  # no page route: JSON
    assert sentence("version 2 not found") == "Version 2 not found" and sentence("") == ""
