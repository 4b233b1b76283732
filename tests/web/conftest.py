"""Fixtures shared by the page tests: signed-in browsers per role, and a stopped job worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_PASSWORD, PASSWORD
from tests.web.test_pages import web_login

SignIn = Callable[[str], TestClient]


@pytest.fixture
def sign_in(app: FastAPI, client: TestClient, admin_headers: dict[str, str]) -> Iterator[SignIn]:
    """A signed-in browser (own cookie jar) for a role."""
    opened: list[TestClient] = []

    def make(role: str) -> TestClient:
        if role == "admin":
            name, password = "admin", ADMIN_PASSWORD
        else:
            name, password = f"web-{role}-{len(opened)}", PASSWORD
            r = client.post(
                "/api/v1/users",
                headers=admin_headers,
                json={"username": name, "password": password, "role": role},
            )
            assert r.status_code == 201, r.text
        c = TestClient(app, raise_server_exceptions=False)
        opened.append(c)
        assert web_login(c, name, password).status_code == 303
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def no_worker(app: FastAPI, client: TestClient) -> None:
    """Stop the server's job worker: submitted jobs stay queued (fast tests of the forms)."""
    app.state.clearscan.jobs.stop()
