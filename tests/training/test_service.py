"""The training service on a real (migrated) SQLite database: listing runs and evaluations by
kind, model and dataset, newest first, paged with the total; getting and cancelling a run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from clearscan.audit.service import RequestContext
from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.errors import Conflict, NotFound
from clearscan.jobs.models import Job
from clearscan.training import service
from clearscan.training.service import EVAL_KIND, TRAIN_KIND

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path) -> Iterator:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_db_engine(url)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def add(db, kind: str, minute: int, *, status: str = "queued", result=None, **params) -> str:
    job = Job(
        id=f"{kind}-{minute:03d}",
        kind=kind,
        status=status,
        params=params,
        result=result,
        created_by="tester",
        created_at=T0 + timedelta(minutes=minute),
    )
    job.progress = {}
    db.add(job)
    db.commit()
    return job.id


def ids(runs: service.Runs) -> list[str]:
    return [j.id for j in runs.items]


def test_list_runs_by_kind_newest_first_with_paging_and_total(db) -> None:
    for m in range(5):
        add(db, TRAIN_KIND, m, dataset="blobs")
    for m in range(5, 8):
        add(db, EVAL_KIND, m, model="m:1.0.0", dataset="blobs")

    runs = service.list_runs(db=db, kind=TRAIN_KIND, limit=2, offset=0)
    assert ids(runs) == ["train-004", "train-003"] and runs.total == 5
    page3 = service.list_runs(db=db, kind=TRAIN_KIND, limit=2, offset=4)
    assert ids(page3) == ["train-000"] and page3.total == 5
    assert service.list_runs(db=db, kind=TRAIN_KIND, limit=2, offset=10) == ([], 5)

    rows, total = service.list_runs(db=db, kind=EVAL_KIND)  # unpacks as (rows, total)
    assert [j.id for j in rows] == ["evaluate-007", "evaluate-006", "evaluate-005"]
    assert total == 3


def test_list_runs_ties_ordered_by_id(db) -> None:
    for name in ("b", "a", "c"):
        db.add(Job(id=name, kind=TRAIN_KIND, status="queued", params={}, created_at=T0))
    db.commit()
    assert ids(service.list_runs(db=db)) == ["a", "b", "c"]


def test_list_evaluations_by_model_name_or_version(db) -> None:
    add(db, EVAL_KIND, 1, model="chest:1.0.0", dataset="d1")
    add(db, EVAL_KIND, 2, model="chest:1.1.0", dataset="d2")
    add(db, EVAL_KIND, 3, model="chest-x:1.0.0", dataset="d1")
    add(db, EVAL_KIND, 4, model="Chest:1.0.0", dataset="d1")

    by_name = service.list_runs(db=db, kind=EVAL_KIND, model="chest")
    assert ids(by_name) == ["evaluate-002", "evaluate-001"] and by_name.total == 2
    one = service.list_runs(db=db, kind=EVAL_KIND, model="chest:1.1.0")
    assert ids(one) == ["evaluate-002"] and one.total == 1
    assert service.list_runs(db=db, kind=EVAL_KIND, model="ches").total == 0
    paged = service.list_runs(db=db, kind=EVAL_KIND, model="chest", limit=1, offset=1)
    assert ids(paged) == ["evaluate-001"] and paged.total == 2
    by_ds = service.list_runs(db=db, kind=EVAL_KIND, model="chest", dataset="d1")
    assert ids(by_ds) == ["evaluate-001"]


def test_list_training_runs_by_model_they_produced_and_status(db) -> None:
    add(db, TRAIN_KIND, 1, status="succeeded", result={"model": "blobs:1.0.0"}, dataset="b")
    add(db, TRAIN_KIND, 2, status="succeeded", result={"model": "blobs:1.1.0"}, dataset="b")
    add(db, TRAIN_KIND, 3, status="failed", dataset="b")
    add(db, TRAIN_KIND, 4, status="running", dataset="b")

    assert ids(service.list_runs(db=db, model="blobs")) == ["train-002", "train-001"]
    assert ids(service.list_runs(db=db, model="blobs:1.0.0")) == ["train-001"]
    assert ids(service.list_runs(db=db, status="failed")) == ["train-003"]
    assert service.list_runs(db=db, dataset="other").total == 0


def test_get_and_cancel_run(db) -> None:
    add(db, TRAIN_KIND, 1)
    add(db, EVAL_KIND, 2, model="m:1.0.0")
    ctx = RequestContext(actor="admin")
    assert service.get_run(db=db, run_id="train-001").kind == TRAIN_KIND
    with pytest.raises(NotFound):
        service.get_run(db=db, run_id="evaluate-002")  # another kind
    with pytest.raises(NotFound):
        service.get_run(db=db, run_id="nope")

    job = service.cancel_run(db=db, ctx=ctx, run_id="train-001", via="web")
    assert job.status == "cancelled"
    with pytest.raises(Conflict) as err:
        service.cancel_run(db=db, ctx=ctx, run_id="train-001")
    assert err.value.status_code == 409 and "already cancelled" in err.value.detail
    with pytest.raises(NotFound):
        service.cancel_run(db=db, ctx=ctx, run_id="evaluate-002")


def test_evaluation_results_only_once_succeeded(db) -> None:
    add(db, EVAL_KIND, 1, status="running", model="m:1.0.0")
    with pytest.raises(Conflict, match="has not succeeded"):
        service.compare_evaluations(db=db, a="evaluate-001", b="evaluate-001")
