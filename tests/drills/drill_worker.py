"""A `clearscan worker` for the drills: the product's worker (Celery settings, claim, lease,
sweep) running one instrumented job kind, `drill`, whose side effect is a row in
`drill_effects` committed in the same transaction as the job's end (JobContext.complete).

Run as `python -m tests.drills.drill_worker QUEUE CONCURRENCY` with the CLEARSCAN_* environment
(database, broker, lease) set by the test."""

from __future__ import annotations

import sys
import time
from typing import Any

from sqlalchemy import text

from clearscan.config import Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.jobs import worker
from clearscan.jobs.service import JobContext

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS drill_effects "
    "(key TEXT NOT NULL, job_id TEXT NOT NULL, attempt INTEGER NOT NULL)"
)


def build(settings: Settings) -> worker.WorkerState:
    sessions = make_session_factory(create_db_engine(settings.sqlalchemy_url))

    def drill(ctx: JobContext) -> dict[str, Any]:
        for step in range(int(ctx.params["steps"])):
            time.sleep(float(ctx.params["step_s"]))
            ctx.report(force=True, step=step + 1)
        result = {"key": ctx.params["key"]}
        with ctx.sessions() as db:
            db.execute(
                text("INSERT INTO drill_effects (key, job_id, attempt) VALUES (:k, :j, :a)"),
                {"k": ctx.params["key"], "j": ctx.job_id, "a": ctx.attempt},
            )
            ctx.complete(db, result)
            db.commit()
        return result

    return worker.WorkerState(sessions=sessions, handlers={"drill": drill})


if __name__ == "__main__":
    queue, concurrency = sys.argv[1], int(sys.argv[2])
    worker.run(Settings(), queues=[queue], concurrency=concurrency, build=build, loglevel="INFO")
