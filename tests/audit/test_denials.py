"""A flood of unauthenticated requests neither serialises the audit chain nor grows it without
bound: a few denials per interval are events of their own, the rest one summary; the metrics
count every one."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from clearscan.audit.actions import Action
from clearscan.audit.denials import DenialCounter, address_prefix
from clearscan.audit.models import AuditEvent
from clearscan.bootstrap import flush_denials


def _events(app) -> int:
    with app.state.clearscan.sessions() as db:
        return db.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def _metric(app, route: str) -> float:
    value = app.state.clearscan.metrics.registry.get_sample_value(
        "clearscan_anonymous_denials_total", {"route": route}
    )
    return value or 0.0


def test_500_anonymous_401s_add_a_bounded_number_of_events(app):
    with TestClient(app) as client:
        before = _events(app)
        for i in range(500):
            headers = {"Authorization": f"Bearer nonsense-{i}"} if i % 2 else {}
            assert client.get("/api/v1/cases", headers=headers).status_code == 401
        assert _metric(app, "/api/v1/cases") == 500
        during = _events(app) - before
        assert during <= 10  # the per-key allowance of individual events
        flush_denials(app.state.clearscan)
        after = _events(app) - before
        assert after <= 11
        with app.state.clearscan.sessions() as db:
            summary = db.execute(
                select(AuditEvent).where(AuditEvent.action == Action.ACCESS_DENIED_SUMMARY)
            ).scalar_one()
            individual = db.execute(
                select(func.count()).where(
                    AuditEvent.action == Action.ACCESS_DENIED, AuditEvent.seq > before
                )
            ).scalar_one()
        assert summary.details["total"] + individual == 500
        top = summary.details["top"][0]
        assert top["route"] == "/api/v1/cases" and top["status"] == 401
        assert top["method"] == "GET"


def test_the_counter_is_bounded_and_summarises_by_network():
    now = [0.0]
    c = DenialCounter(interval_s=60, per_interval=3, per_key=2, max_keys=4, clock=lambda: now[0])
    decisions = [c.note(route="/r", method="GET", status=401, addr="10.0.0.1") for _ in range(3)]
    assert [own for own, _ in decisions] == [True, True, False]
    assert c.note(route="/r", method="GET", status=401, addr="10.0.1.9") == (True, False)
    assert c.note(route="/r", method="GET", status=401, addr="10.0.2.9") == (False, False)
    for i in range(100):  # many networks: counted under one overflow key past max_keys
        c.note(route="/r", method="GET", status=401, addr=f"192.168.{i}.1")
    assert len(c._counts) <= 5 and c.pending() == 102
    now[0] = 61
    assert c.note(route="/r", method="GET", status=401, addr="10.0.0.1") == (False, True)
    assert address_prefix("203.0.113.77") == "203.0.113.0/24"
    assert address_prefix("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert address_prefix("testclient") == "(unknown)"
