"""The batch job handler: exactly one case per image however the run is interrupted (killed
before, inside or after an item's commit; a killed worker process) and delivered again; a runner
that lost its lease or lost the race for an item writes nothing; cancelling stops before the
next image; a refusal about the model stops the batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from clearscan.batches import runner
from clearscan.batches import service as batch_service
from clearscan.batches.models import BatchItem
from clearscan.batches.runner import run_batch
from clearscan.cases.models import Case
from clearscan.cases.workflow import PredictRejected
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.jobs.service import JobCancelled, JobContext, JobLeaseLost
from tests.batches.helpers import images, make_zip, submit_zip, wait_batch
from tests.conftest import ADMIN_PASSWORD

N = 5


class Killed(BaseException):
    """A stand-in for SIGKILL: no handler catches it, nothing after it runs."""


@pytest.fixture
def queued_batch(app: FastAPI, client: TestClient, clinician_headers) -> str:
    """A batch of N images, queued (the app's worker is stopped)."""
    app.state.clearscan.jobs.stop()
    r = submit_zip(client, clinician_headers, make_zip(images(N)), explain=False)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def deliver(app: FastAPI, batch_id: str) -> JobContext:
    """Claim the batch as a worker does (one more attempt) and give the handler's context."""
    state = app.state.clearscan
    with state.sessions() as db:  # a sweep puts a job whose runner died back in the queue
        db.execute(update(Job).where(Job.id == batch_id).values(status="queued"))
        db.commit()
    assert jobs.claim(sessions=state.sessions, job_id=batch_id, worker="test")
    with state.sessions() as db:
        job = db.get(Job, batch_id)
        return JobContext(state.sessions, batch_id, dict(job.params), attempt=job.attempts)


def run(app: FastAPI, ctx: JobContext) -> dict:
    state = app.state.clearscan
    return run_batch(
        ctx,
        sessions=state.sessions,
        registry=state.registry,
        blobs=state.blobs,
        limits=state.limits,
        default_model=state.settings.default_model,
        deid=state.settings.deid_policy(),
    )


def items(app: FastAPI, batch_id: str) -> list[BatchItem]:
    with app.state.clearscan.sessions() as db:
        rows = db.scalars(
            select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.idx)
        ).all()
        for r in rows:
            db.expunge(r)
        return list(rows)


def cases_per_item(app: FastAPI, batch_id: str) -> Counter[int]:
    """How many cases each item of the batch has (its cases' notes name the image)."""
    with app.state.clearscan.sessions() as db:
        notes = db.scalars(select(Case.note).where(Case.note.like(f"Batch {batch_id[:8]}%")))
        return Counter(int(n.split("image ")[1].split(" of")[0]) - 1 for n in notes)


def assert_exactly_once(app: FastAPI, batch_id: str) -> None:
    rows = items(app, batch_id)
    assert [r.status for r in rows] == ["succeeded"] * N
    assert cases_per_item(app, batch_id) == Counter(range(N))
    assert len({r.case_id for r in rows}) == N
    with app.state.clearscan.sessions() as db:
        for r in rows:  # each item names the case made from it
            case = db.get(Case, r.case_id)
            assert case is not None and case.note.startswith(
                f"Batch {batch_id[:8]}, image {r.idx + 1}"
            )


# --- killed and delivered again -----------------------------------------------------------------


def kill_before(k: int, monkeypatch) -> None:
    """Die as item k starts (after k items committed)."""
    real, calls = runner.predict_images, []

    def analyse(**kw):
        calls.append(1)
        if len(calls) == k + 1:
            raise Killed()
        return real(**kw)

    monkeypatch.setattr(runner, "predict_images", analyse)


def kill_inside_commit(k: int, monkeypatch) -> None:
    """Die in item k's commit: its case and its status update are written, not committed."""
    real, calls = runner.MarkOnCommit.__call__, []

    def hook(self, db):
        real(self, db)
        if self.marked:
            calls.append(1)
            if len(calls) == k + 1:
                raise Killed()

    monkeypatch.setattr(runner.MarkOnCommit, "__call__", hook)


def kill_after_commit(k: int, monkeypatch) -> None:
    """Die right after item k's case and status committed, before anything else."""
    real, calls = runner.predict_images, []

    def analyse(**kw):
        out = real(**kw)
        calls.append(1)
        if len(calls) == k + 1:
            raise Killed()
        return out

    monkeypatch.setattr(runner, "predict_images", analyse)


@pytest.mark.parametrize(
    ("kill", "committed"),
    [(kill_before, 2), (kill_inside_commit, 2), (kill_after_commit, 3)],
    ids=["before-an-item", "inside-its-commit", "after-its-commit"],
)
def test_a_run_killed_mid_batch_and_delivered_again_makes_one_case_per_image(
    app, queued_batch, monkeypatch, kill, committed
):
    kill(2, monkeypatch)
    with pytest.raises(Killed):
        run(app, deliver(app, queued_batch))
    done = [r.status for r in items(app, queued_batch)]
    assert done == ["succeeded"] * committed + ["queued"] * (N - committed)
    assert sum(cases_per_item(app, queued_batch).values()) == committed

    monkeypatch.undo()
    analysed = []
    real = runner.predict_images
    monkeypatch.setattr(
        runner, "predict_images", lambda **kw: analysed.append(kw["note"]) or real(**kw)
    )
    result = run(app, deliver(app, queued_batch))
    assert result == {"total": N, "succeeded": N, "failed": 0}
    assert len(analysed) == N - committed  # the items done before were skipped
    assert_exactly_once(app, queued_batch)


def test_a_killed_worker_process_and_a_second_delivery_make_one_case_per_image(
    app, client, clinician_headers, settings, queued_batch
):
    """The real thing: a worker process runs the batch and is killed with SIGKILL after two
    images; a sweep queues the job again and another runner finishes it."""
    script = textwrap.dedent(
        f"""
        import time
        from clearscan.bootstrap import build_state, job_handlers
        from clearscan.config import Settings
        from clearscan.jobs import service as jobs
        import clearscan.batches.runner as runner

        real = runner.predict_images
        def slow(**kw):
            time.sleep(0.4)
            return real(**kw)
        runner.predict_images = slow
        state = build_state(Settings())
        assert jobs.claim(sessions=state.sessions, job_id={queued_batch!r}, worker="doomed")
        jobs.run_claimed(sessions=state.sessions, job_id={queued_batch!r},
                         handlers=job_handlers(state))
        """
    )
    env = {
        **os.environ,
        "CLEARSCAN_DATA_DIR": str(settings.data_dir),
        "CLEARSCAN_SECRET_KEY": settings.secret_key or "",
        "CLEARSCAN_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CLEARSCAN_LOG_LEVEL": "ERROR",
        **({"CLEARSCAN_DATABASE_URL": settings.database_url} if settings.database_url else {}),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while sum(r.status == "succeeded" for r in items(app, queued_batch)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    state = app.state.clearscan
    with state.sessions() as db:
        assert db.get(Job, queued_batch).status == "running"  # its runner is gone
    swept = jobs.sweep(sessions=state.sessions, lease_s=0, redeliver_after_s=None)
    assert swept.requeued == 1
    assert jobs.claim(sessions=state.sessions, job_id=queued_batch, worker="second")
    job = jobs.run_claimed(
        sessions=state.sessions,
        job_id=queued_batch,
        handlers={"batch": lambda ctx: run(app, ctx)},
    )
    assert job.status == "succeeded" and job.attempts == 2
    assert_exactly_once(app, queued_batch)
    batch = wait_batch(client, clinician_headers, queued_batch)
    assert batch["progress"]["succeeded"] == N


# --- runners that must write nothing ------------------------------------------------------------


def test_a_runner_that_lost_its_lease_writes_no_case(app, queued_batch):
    ctx = deliver(app, queued_batch)
    with app.state.clearscan.sessions() as db:  # a sweep gave the job to another attempt
        db.execute(update(Job).where(Job.id == queued_batch).values(attempts=Job.attempts + 1))
        db.commit()
    with pytest.raises(JobLeaseLost):
        run(app, ctx)
    assert [r.status for r in items(app, queued_batch)] == ["queued"] * N
    assert sum(cases_per_item(app, queued_batch).values()) == 0


def test_a_runner_that_loses_the_race_for_an_item_rolls_its_case_back(
    app, queued_batch, monkeypatch
):
    real = runner.predict_images

    def raced(**kw):
        if kw["note"].startswith(f"Batch {queued_batch[:8]}, image 1 "):
            with app.state.clearscan.sessions() as db:  # another runner records item 0 first
                db.execute(
                    update(BatchItem)
                    .where(BatchItem.batch_id == queued_batch, BatchItem.idx == 0)
                    .values(status="failed", error="recorded by the other runner")
                )
                db.commit()
        return real(**kw)

    monkeypatch.setattr(runner, "predict_images", raced)
    result = run(app, deliver(app, queued_batch))
    assert result == {"total": N, "succeeded": N - 1, "failed": 1}
    rows = items(app, queued_batch)
    assert rows[0].status == "failed" and rows[0].case_id is None
    assert cases_per_item(app, queued_batch) == Counter(range(1, N))


# --- cancel and stop ----------------------------------------------------------------------------


def test_cancel_stops_a_running_batch_before_its_next_image(
    app, client, clinician_headers, queued_batch, monkeypatch
):
    real, started = runner.predict_images, threading.Event()
    release = threading.Event()

    def gated(**kw):
        out = real(**kw)
        started.set()
        assert release.wait(30)
        return out

    monkeypatch.setattr(runner, "predict_images", gated)
    state = app.state.clearscan
    assert jobs.claim(sessions=state.sessions, job_id=queued_batch, worker="test")
    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            job=jobs.run_claimed(
                sessions=state.sessions,
                job_id=queued_batch,
                handlers={"batch": lambda ctx: run(app, ctx)},
            )
        )
    )
    worker.start()
    try:
        assert started.wait(60)
        r = client.post(f"/api/v1/batches/{queued_batch}/cancel", headers=clinician_headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "running" and r.json()["cancel_requested"]
    finally:
        release.set()
        worker.join(60)
    assert outcome["job"].status == "cancelled"
    assert [r.status for r in items(app, queued_batch)] == ["succeeded"] + ["queued"] * (N - 1)
    batch = wait_batch(client, clinician_headers, queued_batch)
    assert batch["status"] == "cancelled"
    assert batch["error"] == "cancelled after 1 of 5 images; the 1 case made before is kept"
    assert batch["items"][0]["case_id"] and cases_per_item(app, queued_batch) == Counter([0])


def test_a_refusal_about_the_model_stops_the_batch(app, queued_batch, monkeypatch):
    real, calls = runner.predict_images, []

    def unavailable(**kw):
        calls.append(1)
        if len(calls) == 2:
            raise PredictRejected(503, "model 'pneumonia-cxr' is unavailable: weights missing")
        return real(**kw)

    monkeypatch.setattr(runner, "predict_images", unavailable)
    state = app.state.clearscan
    deliver(app, queued_batch)
    job = jobs.run_claimed(
        sessions=state.sessions, job_id=queued_batch, handlers={"batch": lambda c: run(app, c)}
    )
    assert job.status == "failed"
    assert job.error == "stopped at image 2: model 'pneumonia-cxr' is unavailable: weights missing"
    assert [r.status for r in items(app, queued_batch)] == ["succeeded"] + ["queued"] * (N - 1)
    with state.sessions() as db:  # the batch says what became of the images done before
        shown = batch_service.detail(db=db, job=batch_service.get_batch(db=db, batch_id=job.id))
    assert shown.error == f"{job.error}; the 1 case made before is kept"
    assert shown.progress.queued == N - 1


def test_cancelled_flag_is_checked_before_every_image(app, queued_batch, monkeypatch):
    ctx = deliver(app, queued_batch)
    monkeypatch.setattr(ctx, "cancelled", lambda: True)
    with pytest.raises(JobCancelled):
        run(app, ctx)
    assert sum(cases_per_item(app, queued_batch).values()) == 0


def test_a_batch_whose_worker_keeps_dying_fails_and_keeps_its_cases(app, queued_batch, monkeypatch):
    kill_after_commit(0, monkeypatch)
    with pytest.raises(Killed):
        run(app, deliver(app, queued_batch))
    state = app.state.clearscan
    with state.sessions() as db:  # that was its last attempt
        db.execute(update(Job).where(Job.id == queued_batch).values(max_attempts=1))
        db.commit()
    assert jobs.sweep(sessions=state.sessions, lease_s=0, redeliver_after_s=None).failed == 1
    with state.sessions() as db:
        job = batch_service.get_batch(db=db, batch_id=queued_batch)
        assert job.status == "failed" and "no attempts are left" in (job.error or "")
        shown = batch_service.detail(db=db, job=job)
    assert "nothing was registered" not in (shown.error or "")  # a batch keeps its cases
    assert shown.error.startswith("interrupted 1 time(s)")
    assert shown.error.endswith("; the 1 case made before is kept")
    assert [it.status for it in shown.items] == ["succeeded"] + ["queued"] * (N - 1)
