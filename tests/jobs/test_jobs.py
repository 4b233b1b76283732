"""The job service on a real (migrated) SQLite database with fake handlers: exactly-one claim,
how a run ends (succeeded / failed with the reason / cancelled), progress, cancellation of queued
and running jobs, stale runners, and the in-process worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.jobs import service
from clearscan.jobs.delivery import InProcessWorker
from clearscan.jobs.models import Job
from clearscan.jobs.service import JobContext, JobError, JobNotFound


@pytest.fixture
def sessions(tmp_path) -> Iterator:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_db_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def new_job(sessions, kind: str = "echo", **params) -> str:
    with sessions() as db:
        job = service.submit(db=db, kind=kind, params=params, actor="tester")
        db.commit()
        return job.id


def load(sessions, job_id: str) -> Job:
    with sessions() as db:
        job = service.get(db=db, job_id=job_id)
        db.expunge(job)
        return job


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


# --- submit / claim ---------------------------------------------------------------------------


def test_submit_and_claim_once(sessions):
    job_id = new_job(sessions, x=1)
    job = load(sessions, job_id)
    assert job.status == "queued" and job.kind == "echo" and job.params == {"x": 1}
    assert job.progress == {} and job.result is None and job.error is None
    assert job.attempts == 0 and job.worker is None and job.started_at is None
    assert job.created_by == "tester" and not job.cancel_requested

    assert service.claim(sessions=sessions, job_id=job_id, worker="w1") is True
    assert service.claim(sessions=sessions, job_id=job_id, worker="w2") is False
    job = load(sessions, job_id)
    assert job.status == "running" and job.worker == "w1" and job.attempts == 1
    assert job.started_at is not None and job.heartbeat_at is not None

    with pytest.raises(JobNotFound), sessions() as db:
        service.get(db=db, job_id="0" * 32)
    with pytest.raises(JobNotFound), sessions() as db:
        service.get(db=db, job_id=job_id, kind="other-kind")


def test_racing_claimants_exactly_one_wins(sessions):
    for _ in range(3):
        job_id = new_job(sessions)
        barrier = threading.Barrier(8)
        results: list[tuple[str, bool]] = []
        errors: list[BaseException] = []

        def race(i: int, job_id: str = job_id, barrier=barrier, results=results, errors=errors):
            try:
                barrier.wait()
                results.append(
                    (f"w{i}", service.claim(sessions=sessions, job_id=job_id, worker=f"w{i}"))
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(results) == 8
        winners = [w for w, ok in results if ok]
        assert len(winners) == 1
        job = load(sessions, job_id)
        assert job.status == "running" and job.worker == winners[0] and job.attempts == 1


# --- run_claimed --------------------------------------------------------------------------------


def test_run_claimed_success_failure_progress(sessions):
    seen: list[dict] = []

    def ok(ctx: JobContext) -> dict:
        ctx.report(force=True, epoch=1, stage="training")
        return {"answer": ctx.params["x"] * 2}

    def bad(ctx: JobContext) -> dict:
        ctx.report(force=True, epoch=1)
        raise ValueError("bad thing")

    handlers = {"ok": ok, "bad": bad}

    good = new_job(sessions, kind="ok", x=21)
    assert service.claim(sessions=sessions, job_id=good, worker="w")
    done = service.run_claimed(
        sessions=sessions, job_id=good, handlers=handlers, on_progress=seen.append
    )
    assert done.status == "succeeded" and done.result == {"answer": 42} and done.error is None
    assert done.finished_at is not None
    stored = load(sessions, good)
    assert stored.status == "succeeded" and stored.result == {"answer": 42}
    assert stored.progress == {"epoch": 1, "stage": "training"}
    assert seen == [{"epoch": 1, "stage": "training"}]

    failing = new_job(sessions, kind="bad")
    assert service.claim(sessions=sessions, job_id=failing, worker="w")
    done = service.run_claimed(sessions=sessions, job_id=failing, handlers=handlers)
    assert done.status == "failed" and done.result is None
    assert "bad thing" in done.error and "ValueError" in done.error
    stored = load(sessions, failing)
    assert stored.status == "failed" and "bad thing" in stored.error
    assert stored.progress == {"epoch": 1} and stored.finished_at is not None

    unknown = new_job(sessions, kind="nobody-handles-this")
    assert service.claim(sessions=sessions, job_id=unknown, worker="w")
    done = service.run_claimed(sessions=sessions, job_id=unknown, handlers=handlers)
    assert done.status == "failed" and "nobody-handles-this" in done.error


def test_progress_merges_and_is_throttled_unless_forced(sessions):
    calls: list[dict] = []

    def handler(ctx: JobContext) -> dict:
        ctx.report(force=True, stage="loading", loaded=0)
        ctx.report(loaded=5)  # within a second of the last write: not stored, still a callback
        ctx.report(force=True, stage="training", epoch=2)
        return {}

    job_id = new_job(sessions, kind="h")
    assert service.claim(sessions=sessions, job_id=job_id, worker="w")
    service.run_claimed(
        sessions=sessions, job_id=job_id, handlers={"h": handler}, on_progress=calls.append
    )
    assert load(sessions, job_id).progress == {"stage": "training", "loaded": 0, "epoch": 2}
    assert calls == [
        {"stage": "loading", "loaded": 0},
        {"loaded": 5},
        {"stage": "training", "epoch": 2},
    ]


def test_heartbeat_advances_while_running(sessions, monkeypatch):
    monkeypatch.setattr(service, "HEARTBEAT_S", 0.05)
    beats: list[datetime] = []

    def slow(ctx: JobContext) -> dict:
        for _ in range(6):
            time.sleep(0.1)
            beats.append(load(sessions, ctx.job_id).heartbeat_at)
        return {}

    job_id = new_job(sessions, kind="slow")
    assert service.claim(sessions=sessions, job_id=job_id, worker="w")
    claimed_at = load(sessions, job_id).heartbeat_at
    t0 = time.monotonic()
    assert (
        service.run_claimed(sessions=sessions, job_id=job_id, handlers={"slow": slow}).status
        == "succeeded"
    )
    assert time.monotonic() - t0 < 5  # the heartbeat thread stops promptly at the end
    assert beats[-1] > claimed_at
    assert len(set(beats)) > 1


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_queued_job_at_once(sessions):
    job_id = new_job(sessions)
    with sessions() as db:
        job = service.cancel(db=db, job_id=job_id)
        db.commit()
        assert job.status == "cancelled"
    job = load(sessions, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert job.error and "cancelled" in job.error
    # it can no longer be claimed, and cancelling again is refused
    assert service.claim(sessions=sessions, job_id=job_id, worker="w") is False
    with pytest.raises(JobError, match="already cancelled"), sessions() as db:
        service.cancel(db=db, job_id=job_id)
    with pytest.raises(JobNotFound), sessions() as db:
        service.cancel(db=db, job_id="f" * 32)


def test_cancel_running_job_stops_at_next_report(sessions):
    iterations: list[int] = []

    def loop(ctx: JobContext) -> dict:
        for i in range(500):  # about 10 s if the cancellation is never seen
            iterations.append(i)
            ctx.report(force=True, step=i)
            time.sleep(0.02)
        return {"finished": True}

    job_id = new_job(sessions, kind="loop")
    assert service.claim(sessions=sessions, job_id=job_id, worker="w")
    out: dict[str, Job] = {}
    runner = threading.Thread(
        target=lambda: out.setdefault(
            "job", service.run_claimed(sessions=sessions, job_id=job_id, handlers={"loop": loop})
        )
    )
    runner.start()
    wait_for(lambda: load(sessions, job_id).progress.get("step", -1) >= 3)

    with sessions() as db:  # another session, another thread: like the API
        job = service.cancel(db=db, job_id=job_id)
        db.commit()
        assert job.status == "running" and job.cancel_requested
    runner.join(15)
    assert not runner.is_alive()
    assert out["job"].status == "cancelled"
    job = load(sessions, job_id)
    assert job.status == "cancelled" and job.result is None
    assert job.error and "cancelled" in job.error and job.finished_at is not None
    assert len(iterations) < 100

    with pytest.raises(JobError, match="already cancelled"), sessions() as db:
        service.cancel(db=db, job_id=job_id)


def test_cancel_finished_job_is_refused(sessions):
    for kind, handler in (("ok", lambda ctx: {"v": 1}), ("bad", lambda ctx: 1 / 0)):
        job_id = new_job(sessions, kind=kind)
        assert service.claim(sessions=sessions, job_id=job_id, worker="w")
        status = service.run_claimed(
            sessions=sessions, job_id=job_id, handlers={kind: handler}
        ).status
        assert status in ("succeeded", "failed")
        with pytest.raises(JobError, match=f"already {status}"), sessions() as db:
            service.cancel(db=db, job_id=job_id)
        job = load(sessions, job_id)
        assert job.status == status and not job.cancel_requested


def test_cancel_racing_a_claim_never_loses_the_claim(sessions):
    job_id = new_job(sessions)
    with sessions() as db:
        held = db.get(Job, job_id)  # the cancel request read the row: queued
        assert held.status == "queued"
        assert service.claim(
            sessions=sessions, job_id=job_id, worker="w"
        )  # a worker claims it meanwhile
        job = service.cancel(db=db, job_id=job_id)
        db.commit()
    stored = load(sessions, job_id)
    # either the cancel saw the claim (running + cancel_requested) or lost it: never both
    assert stored.status == "running" and stored.cancel_requested, (job.status, stored.status)


# --- leases and the sweep ------------------------------------------------------------------------


def expire(sessions, job_id: str, by: float = service.LEASE_S + 30) -> None:
    """Make a running job's last heartbeat `by` seconds old (its runner went silent)."""
    old = datetime.now(UTC) - timedelta(seconds=by)
    with sessions() as db:
        db.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
        db.commit()


def test_sweep_requeues_silent_runners_and_leaves_live_ones(sessions):
    stale, fresh, queued = new_job(sessions), new_job(sessions), new_job(sessions)
    assert service.claim(sessions=sessions, job_id=stale, worker="dead:1")
    assert service.claim(sessions=sessions, job_id=fresh, worker="alive:2")
    expire(sessions, stale)

    done = service.sweep(sessions=sessions, redeliver_after_s=None)
    assert (done.requeued, done.failed) == (1, 0)
    assert done.redeliver == [(stale, "default")]
    job = load(sessions, stale)
    assert job.status == "queued" and job.worker is None and job.heartbeat_at is None
    assert job.attempts == 1 and job.error is None and job.finished_at is None
    job = load(sessions, fresh)
    assert job.status == "running" and job.worker == "alive:2"
    assert load(sessions, queued).status == "queued"
    again = service.sweep(sessions=sessions, redeliver_after_s=None)
    assert (again.requeued, again.failed, again.redeliver) == (0, 0, [])

    # the requeued job runs again: the second attempt
    assert service.claim(sessions=sessions, job_id=stale, worker="w2")
    assert load(sessions, stale).attempts == 2


def test_a_job_that_keeps_killing_its_runner_fails_after_max_attempts(sessions):
    with sessions() as db:
        job_id = service.submit(db=db, kind="echo", params={}, actor=None, max_attempts=2).id
        db.commit()
    for attempt in (1, 2):
        assert service.claim(sessions=sessions, job_id=job_id, worker=f"dies:{attempt}")
        expire(sessions, job_id)
        done = service.sweep(sessions=sessions, redeliver_after_s=None)
        if attempt == 1:
            assert (done.requeued, done.failed) == (1, 0)
            assert load(sessions, job_id).status == "queued"
    assert (done.requeued, done.failed, done.redeliver) == (0, 1, [])
    job = load(sessions, job_id)
    assert job.status == "failed" and job.attempts == 2 and job.finished_at is not None
    assert "interrupted 2 time(s)" in job.error and "no attempts are left" in job.error
    # a failed job is never claimed again, however often it is delivered
    assert service.claim(sessions=sessions, job_id=job_id, worker="w") is False


def test_sweep_redelivers_queued_jobs_a_broker_lost(sessions):
    lost, recent, delivered = new_job(sessions), new_job(sessions), new_job(sessions)
    long_ago = datetime.now(UTC) - timedelta(seconds=600)
    with sessions() as db:
        db.execute(update(Job).where(Job.id.in_([lost, delivered])).values(created_at=long_ago))
        db.execute(update(Job).where(Job.id == delivered).values(delivered_at=datetime.now(UTC)))
        db.commit()
    done = service.sweep(sessions=sessions, redeliver_after_s=300)
    assert done.redeliver == [(lost, "default")]  # not the young one, not the one just sent
    assert load(sessions, lost).delivered_at is not None
    # delivered just now: the next sweep leaves it alone until the timeout passes again
    assert service.sweep(sessions=sessions, redeliver_after_s=300).redeliver == []
    assert load(sessions, recent).status == "queued"


def test_racing_sweeps_requeue_a_job_once(sessions):
    job_id = new_job(sessions)
    assert service.claim(sessions=sessions, job_id=job_id, worker="dead:1")
    expire(sessions, job_id)
    barrier = threading.Barrier(4)
    results: list[service.Sweep] = []
    errors: list[BaseException] = []

    def sweeper() -> None:
        try:
            barrier.wait(5)
            results.append(service.sweep(sessions=sessions, redeliver_after_s=None))
        except BaseException as exc:  # collected: a thread's failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and len(results) == 4
    assert sum(r.requeued for r in results) == 1
    assert [p for r in results for p in r.redeliver] == [(job_id, "default")]


def test_a_runner_that_lost_its_lease_writes_nothing(sessions):
    """A runner stalls past its lease, a sweep gives the job to a second attempt; the first
    runner's progress and outcome are discarded and the second attempt's result stands."""
    release = threading.Event()
    reached = threading.Event()

    def stalls(ctx: JobContext) -> dict:
        reached.set()
        release.wait(10)
        ctx.report(force=True, stage="late")  # the stale runner notices here
        return {"by": "first"}

    job_id = new_job(sessions, kind="h")
    assert service.claim(sessions=sessions, job_id=job_id, worker="slow:1")
    out: dict[str, Job] = {}
    first = threading.Thread(
        target=lambda: out.setdefault(
            "job",
            service.run_claimed(
                sessions=sessions, job_id=job_id, handlers={"h": stalls}, heartbeat_s=60
            ),
        )
    )
    first.start()
    assert reached.wait(5)
    expire(sessions, job_id)
    assert service.sweep(sessions=sessions, redeliver_after_s=None).requeued == 1
    assert service.claim(sessions=sessions, job_id=job_id, worker="fast:2")
    second = service.run_claimed(
        sessions=sessions, job_id=job_id, handlers={"h": lambda ctx: {"by": "second"}}
    )
    assert second.status == "succeeded" and second.result == {"by": "second"}
    release.set()
    first.join(10)
    assert not first.is_alive()
    job = load(sessions, job_id)
    assert job.status == "succeeded" and job.result == {"by": "second"} and job.attempts == 2
    assert "stage" not in job.progress  # the stale runner's progress never landed
    assert out["job"].result == {"by": "second"}  # it returns the row as the winner left it


def test_heartbeat_notices_a_lost_lease(sessions):
    """The heartbeat thread, not only progress reports, finds out that the lease is gone."""
    job_id = new_job(sessions, kind="h")
    assert service.claim(sessions=sessions, job_id=job_id, worker="w1")
    seen: list[bool] = []

    def waits(ctx: JobContext) -> dict:
        expire(sessions, job_id)
        service.sweep(sessions=sessions, redeliver_after_s=None)
        assert service.claim(sessions=sessions, job_id=job_id, worker="w2")
        wait_for(ctx.cancelled, timeout=5)
        seen.append(ctx.cancelled())
        return {}

    service.run_claimed(sessions=sessions, job_id=job_id, handlers={"h": waits}, heartbeat_s=0.05)
    assert seen == [True]
    job = load(sessions, job_id)
    assert job.status == "running" and job.worker == "w2"  # the second attempt owns it


# --- the in-process worker ----------------------------------------------------------------------


def test_in_process_worker_runs_jobs_in_creation_order(sessions):
    ran: list[int] = []

    def echo(ctx: JobContext) -> dict:
        ran.append(ctx.params["n"])
        return {"n": ctx.params["n"]}

    worker = InProcessWorker(sessions, {"echo": echo}, poll_s=30.0)
    worker.start()
    try:
        time.sleep(0.2)  # the first poll found nothing: now it sleeps up to poll_s
        with sessions() as db:
            ids = [
                service.submit(db=db, kind="echo", params={"n": n}, actor=None).id for n in range(3)
            ]
            other = service.submit(db=db, kind="not-mine", params={}, actor=None).id
            db.commit()
        worker.notify()
        wait_for(lambda: all(load(sessions, i).status == "succeeded" for i in ids), timeout=10)
    finally:
        worker.stop()
    assert worker._thread is not None and not worker._thread.is_alive()
    assert ran == [0, 1, 2]
    jobs = [load(sessions, i) for i in ids]
    assert [j.result for j in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(j.worker == worker.name_of_runner and j.attempts == 1 for j in jobs)
    starts = [j.started_at for j in jobs]
    assert starts == sorted(starts)
    assert load(sessions, other).status == "queued"  # a kind this worker has no handler for


def test_in_process_worker_reruns_a_job_its_dead_predecessor_left(sessions):
    """A job left running by a dead process (killed, restarted) runs again when a worker starts,
    as its second attempt."""
    job_id = new_job(sessions)
    assert service.claim(sessions=sessions, job_id=job_id, worker="dead:1")
    expire(sessions, job_id)
    worker = InProcessWorker(sessions, {"echo": lambda ctx: {"ok": 1}}, poll_s=0.05)
    worker.start()
    try:
        wait_for(lambda: load(sessions, job_id).status == "succeeded", timeout=10)
    finally:
        worker.stop()
    job = load(sessions, job_id)
    assert job.attempts == 2 and job.result == {"ok": 1} and job.worker == worker.name_of_runner


# --- metrics -------------------------------------------------------------------------------------


def test_job_metrics_outcomes_durations_and_queue(sessions):
    from prometheus_client import generate_latest

    from clearscan.observability.metrics import Metrics

    metrics = Metrics()
    metrics.track_jobs(["echo", "boom"], lambda: service.queue_snapshot(sessions=sessions))
    reg = metrics.registry

    def boom(ctx):
        raise RuntimeError("no")

    handlers = {"echo": lambda ctx: {}, "boom": boom}
    for kind in ("echo", "boom"):
        job_id = new_job(sessions, kind)
        assert service.claim(sessions=sessions, job_id=job_id, worker="w")
        service.run_claimed(sessions=sessions, job_id=job_id, handlers=handlers, metrics=metrics)
    finished = "clearscan_jobs_finished_total"
    assert reg.get_sample_value(finished, {"kind": "echo", "status": "succeeded"}) == 1
    assert reg.get_sample_value(finished, {"kind": "boom", "status": "failed"}) == 1
    assert reg.get_sample_value(finished, {"kind": "boom", "status": "cancelled"}) == 0
    duration = "clearscan_job_duration_seconds_count"
    assert reg.get_sample_value(duration, {"kind": "echo", "status": "succeeded"}) == 1

    new_job(sessions, "echo")
    new_job(sessions, "echo")
    stale = new_job(sessions, "boom")
    assert service.claim(sessions=sessions, job_id=stale, worker="dead:1")
    with sessions() as db:
        old = datetime.now(UTC) - timedelta(hours=1)
        db.execute(update(Job).where(Job.kind == "echo").values(created_at=old))
        db.commit()
    assert reg.get_sample_value("clearscan_jobs", {"kind": "echo", "status": "queued"}) == 2
    assert reg.get_sample_value("clearscan_jobs", {"kind": "boom", "status": "running"}) == 1
    assert reg.get_sample_value("clearscan_jobs", {"kind": "boom", "status": "queued"}) == 0
    age = reg.get_sample_value("clearscan_jobs_oldest_queued_seconds", {"kind": "echo"})
    assert age is not None and 3500 < age < 3700

    with sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == stale)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1), max_attempts=1)
        )
        db.commit()
    assert service.sweep(sessions=sessions, metrics=metrics).failed == 1
    assert reg.get_sample_value(finished, {"kind": "boom", "status": "failed"}) == 2

    # a scrape survives a database that fails
    broken = Metrics()
    broken.track_jobs(["echo"], lambda: (_ for _ in ()).throw(RuntimeError("db down")))
    assert b"clearscan_jobs_finished_total" in generate_latest(broken.registry)
