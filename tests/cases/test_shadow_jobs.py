"""Shadow runs with Celery workers: the API queues a `shadow` job per answered request and runs
no shadow itself; the job (the real handler) compares the shadow version on the stored images
and records the comparisons together with its end, once."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from clearscan.bootstrap import job_handlers
from clearscan.cases.shadow import SHADOW_KIND
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.registry.models import ShadowResult
from tests.conftest import ADMIN_PASSWORD, login
from tests.jobs.test_celery_queue import REDIS, broker_app, redis_db  # noqa: F401 (fixture)
from tests.registry.test_rollout_api import _always_normal_package, _predict


def test_shadow_runs_become_jobs_that_workers_run_once(settings, model_cache, redis_db):  # noqa: F811
    with broker_app(settings, REDIS, model_cache) as client:
        state = client.app.state.clearscan  # type: ignore[attr-defined]
        admin = login(client, "admin", ADMIN_PASSWORD)
        r = client.post(
            "/api/v1/models",
            headers=admin,
            files={"file": ("m.zip", _always_normal_package("1.2.0"), "application/zip")},
        )
        assert r.status_code == 201, r.text
        r = client.put(
            "/api/v1/models/pneumonia-cxr/rollout",
            headers=admin,
            json={"shadow": {"version": "1.2.0"}},
        )
        assert r.status_code == 200, r.text
        preds = [_predict(client, admin)["predictions"][0] for _ in range(4)]
        time.sleep(0.3)
        with state.sessions() as db:
            queued = db.scalars(select(Job).where(Job.kind == SHADOW_KIND)).all()
            assert db.scalar(select(func.count()).select_from(ShadowResult)) == 0  # not here
        assert len(queued) == 4 and {j.status for j in queued} == {"queued"}
        assert sorted(p for j in queued for p in j.params["predictions"]) == sorted(
            p["id"] for p in preds
        )
        assert redis_db.llen("default") == 4  # type: ignore[attr-defined]

        handlers = job_handlers(state)  # what a worker runs
        for job in queued:
            assert jobs.claim(sessions=state.sessions, job_id=job.id, worker="w")
            done = jobs.run_claimed(sessions=state.sessions, job_id=job.id, handlers=handlers)
            assert done.status == "succeeded" and done.result == {"compared": 1}, done.error
            # delivered again: claimed by nobody, compared nothing twice
            assert not jobs.claim(sessions=state.sessions, job_id=job.id, worker="w2")
        rep = client.get("/api/v1/models/pneumonia-cxr/rollout/report", headers=admin).json()
        assert rep["n"] == 4 and rep["shadow_version"] == "1.2.0"
        served_normal = sum(p["top_label"] == "normal" for p in preds)
        assert rep["confusion"] == [[served_normal, 0], [4 - served_normal, 0]]
