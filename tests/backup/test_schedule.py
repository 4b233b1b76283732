"""Scheduled backups: one `backup` job per slot however many processes ask, a backup per slot
named after it, retention after each; and a server with a schedule makes its first backup."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from clearscan.backup import schedule, service
from clearscan.backup.target import LocalLocation
from clearscan.bootstrap import blob_store, model_store
from clearscan.db import create_db_engine, make_session_factory
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from tests.backup.conftest import small_site

T0 = datetime(2026, 12, 1, 4, 20, tzinfo=UTC)


def test_slots():
    assert schedule.slot_of(T0, 1) == datetime(2026, 12, 1, 4, tzinfo=UTC)
    assert schedule.slot_of(T0, 6) == datetime(2026, 12, 1, 0, tzinfo=UTC)
    assert schedule.slot_of(T0, 24) == schedule.slot_of(T0 + timedelta(hours=19), 24)
    assert schedule.slot_key(schedule.slot_of(T0, 1)) == "backup:2026-12-01T04:00:00Z"


def test_one_job_per_slot_across_processes_and_retention(settings, tmp_path: Path):
    small_site(settings)
    engine = create_db_engine(settings.sqlalchemy_url)
    sessions = make_session_factory(engine)
    location = LocalLocation(tmp_path / "backups")
    made: list[Job | None] = []

    def submit() -> None:
        made.append(schedule.submit_due(sessions=sessions, queue=None, hours=1, now=T0))

    racers = [threading.Thread(target=submit) for _ in range(4)]  # four API processes
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert len([j for j in made if j is not None]) == 1
    assert schedule.submit_due(sessions=sessions, queue=None, hours=1, now=T0) is None

    def handler(ctx: jobs.JobContext) -> dict:
        return schedule.run_backup_job(
            ctx,
            database_url=settings.sqlalchemy_url,
            blobs=blob_store(settings),
            models_root=model_store(settings).root,
            data_dir=settings.data_dir,
            location=location,
            key=None,
            keep=2,
            max_age_days=0,
        )

    def run_all() -> list[Job]:
        done = []
        with sessions() as db:
            queued = db.scalars(select(Job.id).where(Job.status == "queued")).all()
        for job_id in queued:
            assert jobs.claim(sessions=sessions, job_id=job_id, worker="test")
            done.append(
                jobs.run_claimed(
                    sessions=sessions, job_id=job_id, handlers={schedule.BACKUP_KIND: handler}
                )
            )
        return done

    first = run_all()
    assert [j.status for j in first] == ["succeeded"], [j.error for j in first]
    assert (
        first[0].result is not None
        and first[0].result["backup"] == "clearscan-20261201T040000Z-scheduled"
    )
    assert location.names() == ["clearscan-20261201T040000Z-scheduled"]

    # a second attempt of the same slot (its first was killed after the backup) makes no second
    job = jobs.submit(
        db=(db := sessions()),
        kind=schedule.BACKUP_KIND,
        params={"slot": "2026-12-01T04:00:00+00:00"},
        actor="test",
    )
    db.commit()
    db.close()
    again = run_all()
    assert again[0].id == job.id and (again[0].result or {})["existing"] is True
    assert len(location.names()) == 1

    for hour in (1, 2, 3):  # three more slots, newest two kept
        later = T0 + timedelta(hours=hour)
        assert schedule.submit_due(sessions=sessions, queue=None, hours=1, now=later) is not None
        assert [j.status for j in run_all()] == ["succeeded"]
    assert location.names() == [
        "clearscan-20261201T060000Z-scheduled",
        "clearscan-20261201T070000Z-scheduled",
    ]
    for name in location.names():
        service.verify(location, name)
    with sessions() as db:
        keys = db.scalars(
            select(Job.idempotency_key)
            .where(Job.kind == schedule.BACKUP_KIND)
            .order_by(Job.created_at)
        ).all()
    assert [k for k in keys if k] == [
        "backup:2026-12-01T04:00:00Z",
        "backup:2026-12-01T05:00:00Z",
        "backup:2026-12-01T06:00:00Z",
        "backup:2026-12-01T07:00:00Z",
    ]
    engine.dispose()


def test_prune_by_age_keeps_the_newest(tmp_path: Path, settings):
    small_site(settings)
    location = LocalLocation(tmp_path / "backups")
    from tests.backup.conftest import sources

    names = []
    for hours_ago in (50, 30, 1):
        slot = datetime.now(UTC) - timedelta(hours=hours_ago)
        names.append(service.create(sources(settings), location, slot=slot).name)
    gone = service.prune(location, keep=0, max_age_days=1)
    assert sorted(gone) == sorted(names[:2]) and location.names() == [names[2]]
    # even when the newest is old, it stays
    assert service.prune(location, keep=0, max_age_days=0.01) == []


def test_server_with_a_schedule_backs_up(settings, model_cache, tmp_path: Path):
    from clearscan.app import create_app

    scheduled = settings.model_copy(
        update={"backup_schedule_hours": 24, "backup_to": str(tmp_path / "nightly")}
    )
    location = LocalLocation(tmp_path / "nightly")
    with TestClient(create_app(scheduled, model_cache=model_cache)):
        deadline = time.monotonic() + 30
        while not location.names() and time.monotonic() < deadline:
            time.sleep(0.2)
    names = location.names()
    assert len(names) == 1 and names[0].endswith("-scheduled")
    service.verify(location, names[0])
