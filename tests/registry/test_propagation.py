"""Roll-out changes reach other processes: two apps on one data dir and database (as two API
processes are) see each other's activation, rollback and canary within STATE_TTL_S, and a
process reads the roll-out state at most once per STATE_TTL_S however many requests it routes.
tests/multiprocess/ checks the same with real server processes on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import event

from clearscan.app import create_app
from clearscan.registry.routing import STATE_TTL_S
from tests.conftest import ADMIN_PASSWORD, login, png_bytes
from tests.registry.test_versions_api import _import, package_zip

MODEL = "/api/v1/models/pneumonia-cxr"


def _until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` holds; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not seen in time"
        time.sleep(0.01)
    return time.monotonic() - start


def test_another_process_sees_rollout_changes_within_the_ttl(settings, model_cache):
    a = create_app(settings, model_cache=model_cache)
    b = create_app(settings, model_cache=model_cache)  # the same data dir and database
    with TestClient(a) as ca, TestClient(b) as cb:
        admin_a, admin_b = login(ca, "admin", ADMIN_PASSWORD), login(cb, "admin", ADMIN_PASSWORD)
        assert _import(ca, admin_a, package_zip("1.1.0")).status_code == 201
        assert cb.get(MODEL, headers=admin_b).json()["version"] == "1.0.0"

        def b_serves(version: str) -> Callable[[], bool]:
            return lambda: cb.get(MODEL, headers=admin_b).json()["version"] == version

        r = ca.post(f"{MODEL}/versions/1.1.0/activate", headers=admin_a)
        assert r.status_code == 200, r.text
        assert _until(b_serves("1.1.0"), timeout=STATE_TTL_S + 0.5) <= STATE_TTL_S + 0.25
        pred = cb.post(
            "/api/v1/predict",
            headers=admin_b,
            files=[("file", ("x.png", png_bytes(), "image/png"))],
        ).json()["predictions"][0]
        assert pred["model"]["version"] == "1.1.0"  # B predicts with it, not only lists it

        assert ca.post(f"{MODEL}/rollback", headers=admin_a).status_code == 200
        _until(b_serves("1.0.0"), timeout=STATE_TTL_S + 0.5)

        rollout = {"canary": {"version": "1.1.0", "percent": 40}}
        assert ca.put(f"{MODEL}/rollout", headers=admin_a, json=rollout).status_code == 200

        def b_canary() -> bool:
            body = cb.get(f"{MODEL}/rollout", headers=admin_b).json()
            return body["canary"] == {"version": "1.1.0", "percent": 40}

        _until(b_canary, timeout=STATE_TTL_S + 0.5)


def test_the_state_is_read_at_most_once_per_ttl(app):
    registry = app.state.clearscan.registry
    reads = 0

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        nonlocal reads
        if "FROM model_state" in statement:
            reads += 1

    engine = app.state.clearscan.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        start = time.monotonic()
        calls = 0
        while time.monotonic() - start < 1.2:
            registry.route("pneumonia-cxr", f"case-{calls}")
            calls += 1
        elapsed = time.monotonic() - start
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert calls > 100
    assert 1 <= reads <= elapsed / STATE_TTL_S + 1
