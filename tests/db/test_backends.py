"""The same code on SQLite and on the real PostgreSQL server (127.0.0.1:5432): migrations, the
main path, the append-only hash-chained audit trail and concurrent appends."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from clearscan.app import create_app
from clearscan.audit import service as audit
from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, PASSWORD, login, pg_available, pg_database, png_bytes

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request, settings: Settings) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield settings
        return
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        yield pg


def test_main_path_and_audit_on_backend(backend_settings):
    app = create_app(backend_settings)
    state = app.state.clearscan
    try:
        with TestClient(app) as c:
            admin = login(c, "admin", ADMIN_PASSWORD)
            r = c.post(
                "/api/v1/users",
                headers=admin,
                json={"username": "doc", "password": PASSWORD, "role": "clinician"},
            )
            assert r.status_code == 201
            doc = login(c, "doc", PASSWORD)
            r = c.post(
                "/api/v1/predict",
                headers=doc,
                data={"patient_ref": "P1"},
                files=[("file", ("x.png", png_bytes(), "image/png"))],
            )
            assert r.status_code == 200, r.text
            pred = r.json()["predictions"][0]
            label = pred["top_label"]
            assert c.get(f"/api/v1/cases?label={label}&user=doc", headers=doc).json()["total"] == 1
            rv = c.post(
                f"/api/v1/predictions/{pred['id']}/review", headers=doc, json={"agree": True}
            )
            assert rv.status_code == 201
            case = c.get(f"/api/v1/cases/{r.json()['case_id']}", headers=doc).json()
            assert case["images"][0]["predictions"][0]["reviews"][0]["user"] == "doc"

        def worker(n: int) -> None:
            for i in range(5):
                with state.sessions() as db:
                    audit.record(
                        audit.Entry(f"t.{i}"), db=db, ctx=audit.RequestContext(actor=f"w{n}")
                    )

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with state.sessions() as db:
            report = audit.verify_chain(db=db)
            assert report.ok, report
            with pytest.raises(DBAPIError):
                db.execute(text("UPDATE audit_events SET actor = 'x'"))
            db.rollback()
            with pytest.raises(DBAPIError):
                db.execute(text("DELETE FROM audit_events"))
            db.rollback()
    finally:
        state.engine.dispose()
