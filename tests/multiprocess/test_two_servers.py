"""Two API processes on two ports against one PostgreSQL database and data dir (each
``uvicorn clearscan.app:app_from_env --factory``, as a process manager or two containers run
them): what one process changes, the other serves. A model version activated through A serves
on B within a second; tokens and browser sessions from A are valid on B; failed logins and
request rates are counted once for both."""

from __future__ import annotations

import time

import httpx

from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, PASSWORD, png_bytes
from tests.multiprocess.conftest import ServerFactory, free_port, server_env, until
from tests.registry.test_versions_api import package_zip
from tests.web.test_pages import csrf_of

MODEL = "/api/v1/models/pneumonia-cxr"


def _token(c: httpx.Client, username: str, password: str) -> dict[str, str]:
    r = c.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_two_processes_share_rollouts_sessions_and_limits(
    pg_settings: Settings, start_server: ServerFactory
):
    env = server_env(
        pg_settings,
        CLEARSCAN_LOGIN_MAX_FAILURES="3",
        CLEARSCAN_RATE_LIMIT_PREDICT_PER_USER="4",
    )
    servers = []
    for name in ("a", "b"):
        port = free_port()
        args = ["-m", "uvicorn", "clearscan.app:app_from_env", "--factory"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        servers.append(start_server(args, env, port, name))
    for s in servers:
        s.wait_ready()
    a_srv, b_srv = servers
    with (
        httpx.Client(base_url=a_srv.base, timeout=30) as a,
        httpx.Client(base_url=b_srv.base, timeout=30) as b,
    ):
        # a bearer token from A is valid on B (signed, stateless)
        admin = _token(a, "admin", ADMIN_PASSWORD)
        assert b.get("/api/v1/users", headers=admin).status_code == 200

        # a browser session started on A is valid on B (sessions are database rows)
        page = a.get("/login")
        form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_of(page.text)}
        assert a.post("/login", data=form).status_code == 303
        b.cookies = a.cookies
        home = b.get("/cases")
        assert home.status_code == 200 and "/login" not in str(home.url)
        b.cookies.clear()

        # a version activated through A serves on B within a second
        r = a.post(
            "/api/v1/models",
            headers=admin,
            files={"file": ("pkg.zip", package_zip("1.1.0"), "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        assert b.get(MODEL, headers=admin).json()["version"] == "1.0.0"
        r = a.post(f"{MODEL}/versions/1.1.0/activate", headers=admin)
        assert r.status_code == 200, r.text
        activated = time.monotonic()
        until(
            lambda: b.get(MODEL, headers=admin).json()["version"] == "1.1.0",
            timeout=1.0,
            what="B serving the version activated through A",
            step=0.02,
        )
        seen_s = time.monotonic() - activated
        image = [("file", ("x.png", png_bytes(), "image/png"))]
        pred = b.post("/api/v1/predict", headers=admin, files=image, data={"explain": "false"})
        served_s = time.monotonic() - activated
        assert pred.status_code == 200, pred.text
        assert pred.json()["predictions"][0]["model"]["version"] == "1.1.0"
        print(f"B lists 1.1.0 {seen_s:.3f} s, predicts with it {served_s:.3f} s after activation")
        assert seen_s <= 1.0

        # predictions per user: 4 a minute, counted across both processes
        r = a.post(
            "/api/v1/users",
            headers=admin,
            json={"username": "doc", "password": PASSWORD, "role": "clinician"},
        )
        assert r.status_code == 201, r.text
        doc = _token(b, "doc", PASSWORD)
        statuses = [c.post("/api/v1/predict", headers=doc).status_code for c in (a, b, a, b)]
        assert statuses == [422] * 4  # no file: refused by the route, yet counted
        refused = a.post("/api/v1/predict", headers=doc)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["detail"].startswith("too many predictions")

        # failed logins for one (name, address): 3 allowed, split between the processes, then
        # the back-off answers 429 on both; the right password from this address, where `doc`
        # signed in before, is never refused
        for c in (a, b, a):
            assert (
                c.post(
                    "/api/v1/auth/token", data={"username": "doc", "password": "wrong-password"}
                ).status_code
                == 401
            )
        for c in (b, a):
            r = c.post("/api/v1/auth/token", data={"username": "doc", "password": "wrong-again"})
            assert r.status_code == 429 and r.headers["retry-after"]
        r = b.post("/api/v1/auth/token", data={"username": "doc", "password": PASSWORD})
        assert r.status_code == 200, r.text
