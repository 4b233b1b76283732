"""Training runs through the API: a tiny image dataset -> queued run -> the app's in-process worker
trains it -> a new, inactive model version (manifest with dataset hash, metrics, history) that
serves only after an admin activates it; determinism per seed; 422 refusals that queue nothing;
cancellation (queued and running) that registers nothing; a run whose worker died."""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from sqlalchemy import update

from clearscan.jobs import service as jobs
from clearscan.jobs.delivery import InProcessWorker
from clearscan.jobs.models import FINISHED, Job
from clearscan.training.recipes import RECIPES
from clearscan.training.runs import TRAIN_KIND
from tests.conftest import png_bytes

RUNS = "/api/v1/training-runs"
SIZE = 28


# --- helpers ----------------------------------------------------------------------------------


def blob_image(rng: np.random.Generator, bright: bool) -> np.ndarray:
    """Mid-grey noise with one bright (or dark) Gaussian blob somewhere near the centre."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(9, 19, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 5) ** 2))
    img = 0.5 + (0.4 if bright else -0.4) * blob + rng.normal(0, 0.05, (SIZE, SIZE))
    return np.clip(img, 0, 1)


def blob_zip(per_class: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("bright", "dark"):
            for i in range(per_class):
                zf.writestr(f"blobs/{cls}/{i:03d}.png", png_bytes(blob_image(rng, cls == "bright")))
    return buf.getvalue()


def upload(client, headers, name: str, data: bytes, filename: str = "data.zip", **form) -> dict:
    r = client.post(
        "/api/v1/datasets",
        headers=headers,
        data={"name": name, **form},
        files={"file": (filename, data, "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    return r.json()


def submit(client, headers, **body):
    return client.post(RUNS, headers=headers, json=body)


def get_run(client, headers, run_id: str) -> dict:
    r = client.get(f"{RUNS}/{run_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def wait_run(client, headers, run_id: str, until=None, timeout: float = 120.0) -> dict:
    """Poll until the run ended (or, with `until`, until `until(run)` holds; ending first fails)."""
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(client, headers, run_id)
        if until is None and run["status"] in FINISHED:
            return run
        if until is not None:
            if until(run):
                return run
            if run["status"] in FINISHED:
                pytest.fail(f"run ended {run['status']} ({run['error']}) first")
        assert time.monotonic() < deadline, f"run still {run['status']}: {run['progress']}"
        time.sleep(0.5)


def train(client, headers, **body) -> dict:
    r = submit(client, headers, **body)
    assert r.status_code == 202, r.text
    run = wait_run(client, headers, r.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    return run


def predict(client, headers, model: str, img: np.ndarray):
    return client.post(
        "/api/v1/predict",
        headers=headers,
        files=[("file", ("x.png", png_bytes(img), "application/octet-stream"))],
        data={"model": model},
    )


def weights(settings, name: str, version: str) -> dict[str, np.ndarray]:
    m = onnx.load(str(settings.data_dir / "models" / name / version / "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def store_versions(settings, name: str) -> list[str]:
    root = settings.data_dir / "models" / name
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def total_runs(client, headers) -> int:
    r = client.get(RUNS, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total"]


# --- tests --------------------------------------------------------------------------------------


def test_train_register_inactive_then_activate_and_predict(
    client, admin_headers, clinician_headers, viewer_headers, settings
):
    ds = upload(client, admin_headers, "blobs", blob_zip())
    r = submit(client, admin_headers, dataset="blobs", epochs=2)
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["status"] in ("queued", "running")
    assert queued["params"] == {"dataset": "blobs", "epochs": 2, "seed": 0}
    assert queued["created_by"] == "admin" and queued["result"] is None

    run = wait_run(client, viewer_headers, queued["id"])  # any user may watch
    assert run["status"] == "succeeded", run["error"]
    assert run["error"] is None and run["started_at"] and run["finished_at"]
    result = run["result"]
    assert result["model"] == "blobs:1.0.0"
    assert result["name"] == "blobs" and result["version"] == "1.0.0"
    assert result["dataset"] == {"name": "blobs", "hash": ds["content_hash"]}
    assert result["recipe"]["name"] == "cnn-small" and result["recipe"]["epochs"] == 2
    assert result["epochs_run"] == 2 and 1 <= result["best_epoch"] <= 2
    val = result["val_metrics"]
    n_val = sum(ds["counts"]["val"].values())
    assert val["n"] == n_val
    assert 0.0 <= val["accuracy"] <= 1.0 and 0.0 <= val["auc"] <= 1.0
    assert val["auc"] >= 0.8  # the classes differ visibly
    assert 0.0 < result["threshold"] < 1.0

    history = run["progress"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all({"epoch", "loss", "val_auc"} <= set(h) for h in history)
    assert all(h["loss"] > 0 for h in history)
    assert run["progress"]["epochs"] == 2

    listing = client.get(RUNS, headers=viewer_headers).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == run["id"]

    # a new, inactive version with the package files and the dataset's hash
    versions = client.get("/api/v1/models/blobs/versions", headers=viewer_headers)
    assert versions.status_code == 200, versions.text
    items = versions.json()["items"]
    assert [(v["version"], v["status"], v["source"]) for v in items] == [
        ("1.0.0", "inactive", "store")
    ]
    pkg = settings.data_dir / "models" / "blobs" / "1.0.0"
    for f in ("manifest.json", "model.onnx", "MODEL_CARD.md", "ood_reference.json"):
        assert (pkg / f).is_file(), f
    detail = client.get("/api/v1/models/blobs", headers=viewer_headers)
    assert detail.status_code == 200, detail.text
    d = detail.json()
    assert d["status"] == "inactive" and d["version"] == "1.0.0"
    assert d["labels"] == ["bright", "dark"]
    assert d["training"]["dataset"] == "blobs"
    assert d["training"]["dataset_hash"] == ds["content_hash"]
    assert d["training"]["recipe"]["name"] == "cnn-small"
    assert [h["epoch"] for h in d["training"]["history"]] == [1, 2]
    assert d["metrics"]["validation"] == val
    assert ds["content_hash"] in d["model_card"]
    assert d["input"]["height"] == d["input"]["width"] == SIZE

    # it does not serve before an admin activates it (the default model still does)
    rng = np.random.default_rng(99)
    r = predict(client, clinician_headers, "blobs", blob_image(rng, True))
    assert r.status_code == 409, r.text
    assert "no active version" in r.json()["detail"]
    listed = {
        m["name"]: m for m in client.get("/api/v1/models", headers=viewer_headers).json()["items"]
    }
    assert listed["blobs"]["status"] == "inactive"
    assert listed["pneumonia-cxr"]["status"] == "active"

    assert (
        client.post(
            "/api/v1/models/blobs/versions/1.0.0/activate", headers=clinician_headers
        ).status_code
        == 403
    )
    act = client.post("/api/v1/models/blobs/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text
    assert act.json()["status"] == "active"

    r = predict(client, clinician_headers, "blobs", blob_image(rng, True))
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["model"] == {"name": "blobs", "version": "1.0.0"}
    assert p["labels"] == ["bright", "dark"] and abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["heatmap_url"]
    heat = client.get(p["heatmap_url"], headers=clinician_headers)
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    # served through the serving preprocessing, it still tells the classes apart
    assert p["top_label"] == "bright", p["probabilities"]
    r = predict(client, clinician_headers, "blobs", blob_image(rng, False))
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["top_label"] == "dark", r.json()["predictions"][0]

    events = client.get("/api/v1/audit?action=training.submit", headers=admin_headers).json()
    assert events["total"] == 1
    assert events["items"][0]["object_id"] == run["id"]
    assert events["items"][0]["details"]["dataset_hash"] == ds["content_hash"]


def test_same_seed_same_model_other_seed_differs(client, admin_headers, settings):
    upload(client, admin_headers, "blobs", blob_zip())
    a = train(client, admin_headers, dataset="blobs", epochs=1, seed=7, model_name="seed-a")
    b = train(client, admin_headers, dataset="blobs", epochs=1, seed=7, model_name="seed-b")
    c = train(client, admin_headers, dataset="blobs", epochs=1, seed=8, model_name="seed-c")
    assert [x["result"]["model"] for x in (a, b, c)] == [
        "seed-a:1.0.0",
        "seed-b:1.0.0",
        "seed-c:1.0.0",
    ]
    wa, wb, wc = (weights(settings, n, "1.0.0") for n in ("seed-a", "seed-b", "seed-c"))
    assert wa and set(wa) == set(wb) == set(wc)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    assert a["result"]["val_metrics"] == b["result"]["val_metrics"]
    assert a["result"]["threshold"] == b["result"]["threshold"]
    assert a["progress"]["history"] == b["progress"]["history"]
    float_keys = [k for k in wa if wa[k].dtype.kind == "f" and wa[k].size > 1]
    assert any(not np.array_equal(wa[k], wc[k]) for k in float_keys)


def test_a_second_run_of_a_name_is_a_new_inactive_version(client, admin_headers, settings):
    upload(client, admin_headers, "blobs", blob_zip())
    first = train(client, admin_headers, dataset="blobs", epochs=1, model_name="m")
    assert first["result"]["model"] == "m:1.0.0"
    act = client.post("/api/v1/models/m/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text
    second = train(client, admin_headers, dataset="blobs", epochs=1, model_name="m", seed=1)
    assert second["result"]["model"] == "m:1.1.0"
    items = client.get("/api/v1/models/m/versions", headers=admin_headers).json()["items"]
    assert {v["version"]: v["status"] for v in items} == {"1.1.0": "inactive", "1.0.0": "active"}


BAD_REQUESTS = {
    "unknown-dataset": ({"dataset": "no-such-set"}, ["no-such-set", "not found"]),
    "unknown-recipe": ({"dataset": "blobs", "recipe": "resnet-9000"}, ["resnet-9000", "cnn-small"]),
    "epochs-0": ({"dataset": "blobs", "epochs": 0}, ["epochs"]),
    "epochs-501": ({"dataset": "blobs", "epochs": 501}, ["epochs"]),
    # windows apply to sensor streams only; an image recipe does not train a table
    "window-on-images": ({"dataset": "blobs", "window": 16}, ["window"]),
    "image-recipe-on-table": ({"dataset": "stream", "recipe": "cnn-small"}, ["cnn-small"]),
    "window-too-short": ({"dataset": "stream", "window": 2}, ["window"]),
    "bad-model-name": ({"dataset": "blobs", "model_name": "Bad Name"}, ["model_name"]),
    "unknown-field": ({"dataset": "blobs", "learning_rate": 1}, ["learning_rate"]),
}


def test_bad_requests_are_422_and_queue_nothing(
    client, admin_headers, clinician_headers, viewer_headers, settings
):
    upload(client, admin_headers, "blobs", blob_zip(per_class=8))
    rng = np.random.default_rng(4)
    rows = [f"{t},{rng.normal():.3f},{'ab'[r % 2]},r{r}" for r in range(12) for t in range(20)]
    csv = "t,ax,label,rec\n" + "\n".join(rows) + "\n"
    table = upload(
        client,
        admin_headers,
        "stream",
        csv.encode(),
        filename="s.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )
    assert table["kind"] == "table"
    assert total_runs(client, admin_headers) == 0
    for case, (body, words) in BAD_REQUESTS.items():
        r = submit(client, admin_headers, **body)
        assert r.status_code == 422, (case, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str), case
        for w in words:
            assert w in detail, (case, w, detail)
    for headers in (clinician_headers, viewer_headers):
        assert submit(client, headers, dataset="blobs", epochs=1).status_code == 403
    assert submit(client, {}, dataset="blobs", epochs=1).status_code == 401
    assert total_runs(client, admin_headers) == 0
    events = client.get("/api/v1/audit?action=training.submit", headers=admin_headers).json()
    assert events["total"] == 0
    assert store_versions(settings, "blobs") == []


def test_cancel_queued_and_running_runs_registers_nothing(
    client, admin_headers, viewer_headers, settings, monkeypatch
):
    # no early stopping: 500 epochs would take minutes, so only a cancellation ends it early
    monkeypatch.setitem(RECIPES, "cnn-small", replace(RECIPES["cnn-small"], patience=10_000))
    upload(client, admin_headers, "blobs", blob_zip())
    r = submit(client, admin_headers, dataset="blobs", epochs=500, model_name="slow")
    assert r.status_code == 202, r.text
    slow = r.json()["id"]
    run = wait_run(
        client,
        viewer_headers,
        slow,
        until=lambda x: x["status"] == "running" and x["progress"].get("epoch", 0) >= 1,
        timeout=60,
    )
    assert run["progress"]["stage"] == "training" and run["progress"]["epochs"] == 500

    # the worker is busy: a second run waits in the queue, and is cancelled at once
    r = submit(client, admin_headers, dataset="blobs", epochs=1, model_name="queued")
    assert r.status_code == 202, r.text
    queued = r.json()["id"]
    assert get_run(client, admin_headers, queued)["status"] == "queued"
    assert client.post(f"{RUNS}/{queued}/cancel", headers=viewer_headers).status_code == 403
    r = client.post(f"{RUNS}/{queued}/cancel", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and "before it started" in r.json()["error"]

    # the running one stops at its next progress report
    r = client.post(f"{RUNS}/{slow}/cancel", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["cancel_requested"] is True and r.json()["status"] == "running"
    run = wait_run(client, admin_headers, slow, timeout=60)
    assert run["status"] == "cancelled", run
    assert run["result"] is None and "nothing was registered" in run["error"]
    assert run["progress"]["epoch"] < 500

    # nothing was registered, and the queued run never started
    for name in ("slow", "queued"):
        assert store_versions(settings, name) == []
        assert client.get(f"/api/v1/models/{name}", headers=admin_headers).status_code == 404
    time.sleep(1.0)
    q = get_run(client, admin_headers, queued)
    assert q["status"] == "cancelled" and q["started_at"] is None
    assert store_versions(settings, "queued") == []

    for run_id in (slow, queued):
        again = client.post(f"{RUNS}/{run_id}/cancel", headers=admin_headers)
        assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    missing = client.post(f"{RUNS}/{'0' * 32}/cancel", headers=admin_headers)
    assert missing.status_code == 404
    assert client.get(f"{RUNS}/{'0' * 32}", headers=admin_headers).status_code == 404
    events = client.get("/api/v1/audit?action=training.cancel", headers=admin_headers).json()
    assert sorted(e["object_id"] for e in events["items"]) == sorted([slow, queued])


def test_run_named_like_a_bundled_model_gets_a_new_version(client, admin_headers, settings):
    upload(client, admin_headers, "blobs", blob_zip(per_class=16))
    run = train(client, admin_headers, dataset="blobs", epochs=1, model_name="pneumonia-cxr")
    name, version = run["result"]["name"], run["result"]["version"]
    items = client.get(f"/api/v1/models/{name}/versions", headers=admin_headers).json()["items"]
    listed = {v["version"]: v for v in items}
    # the trained version is listed as a store version of its own, next to the bundled 1.0.0
    assert version != "1.0.0"
    assert listed[version]["source"] == "store" and listed[version]["status"] == "inactive"
    assert listed["1.0.0"]["source"] == "bundled"


def test_run_whose_worker_died_with_no_attempts_left_fails(client, admin_headers, app, settings):
    state = app.state.clearscan
    state.jobs.stop()  # no server worker: this process plays the dead one
    assert not state.jobs._thread.is_alive()
    upload(client, admin_headers, "blobs", blob_zip(per_class=8))
    old = datetime.now(UTC) - timedelta(seconds=jobs.LEASE_S * 3)
    ids = []
    for _ in range(2):
        with state.sessions() as db:
            job = jobs.submit(
                db=db,
                kind=TRAIN_KIND,
                params={"dataset": "blobs", "epochs": 1},
                actor="admin",
                max_attempts=1,
            )
            db.commit()
            ids.append(job.id)
        assert jobs.claim(sessions=state.sessions, job_id=job.id, worker="dead-host:4242")
        with state.sessions() as db:
            db.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=old))
            db.commit()
    dead, dead_too = ids
    assert get_run(client, admin_headers, dead)["status"] == "running"

    # a sweep (any process) fails it with the reason
    assert jobs.sweep(sessions=state.sessions).failed == 2
    run = get_run(client, admin_headers, dead)
    assert run["status"] == "failed" and "interrupted" in run["error"]
    assert run["result"] is None and run["finished_at"] is not None
    assert store_versions(settings, "blobs") == []
    assert client.get("/api/v1/models/blobs", headers=admin_headers).status_code == 404
    # an ended run cannot be cancelled
    assert client.post(f"{RUNS}/{dead}/cancel", headers=admin_headers).status_code == 409
    assert get_run(client, admin_headers, dead_too)["status"] == "failed"


def test_restarted_worker_reruns_the_dead_run_and_runs_the_queue(
    client, admin_headers, app, settings
):
    """On start-up the worker queues again a run left running by a dead process (its second
    attempt) and trains it and the queued ones; each registers exactly one version."""
    from clearscan.bootstrap import job_handlers

    state = app.state.clearscan
    state.jobs.stop()
    upload(client, admin_headers, "blobs", blob_zip(per_class=16))
    with state.sessions() as db:
        job = jobs.submit(
            db=db, kind=TRAIN_KIND, params={"dataset": "blobs", "epochs": 1}, actor="admin"
        )
        db.commit()
    assert jobs.claim(sessions=state.sessions, job_id=job.id, worker="dead-host:4242")
    old = datetime.now(UTC) - timedelta(seconds=jobs.LEASE_S + 5)
    with state.sessions() as db:
        db.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=old))
        db.commit()
    r = submit(client, admin_headers, dataset="blobs", epochs=1, model_name="after-restart")
    assert r.status_code == 202, r.text
    assert get_run(client, admin_headers, r.json()["id"])["status"] == "queued"

    worker = InProcessWorker(state.sessions, job_handlers(state), poll_s=0.2)
    worker.start()
    try:
        fresh = wait_run(client, admin_headers, r.json()["id"])
        dead = wait_run(client, admin_headers, job.id)
    finally:
        worker.stop(timeout=30)
    assert fresh["status"] == "succeeded", fresh["error"]
    assert dead["status"] == "succeeded", dead["error"]
    with state.sessions() as db:
        assert db.get(Job, job.id).attempts == 2
    assert store_versions(settings, "blobs") == ["1.0.0"]
    assert store_versions(settings, "after-restart") == ["1.0.0"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the job code catches it, nothing after it runs."""


def test_a_run_killed_after_publishing_is_finished_by_its_next_attempt(
    client, admin_headers, app, settings
):
    """The window between the version's atomic rename into the store and the run's recorded
    end: the next attempt finds the version stamped with its job id and ends the run with the
    staged result, training nothing and publishing nothing twice."""
    from clearscan.bootstrap import job_handlers
    from clearscan.training.runs import run_training

    state = app.state.clearscan
    state.jobs.stop(timeout=60)  # this test plays the workers
    assert not state.jobs._thread.is_alive()
    upload(client, admin_headers, "blobs", blob_zip(per_class=8))
    with state.sessions() as db:
        job = jobs.submit(
            db=db,
            kind=TRAIN_KIND,
            params={"dataset": "blobs", "epochs": 1, "model_name": "once"},
            actor="admin",
        )
        db.commit()

    def dies_after_publish(ctx):
        def killed(name, version):
            raise Killed()

        return run_training(
            ctx, sessions=state.sessions, blobs=state.blobs, store=state.store, on_registered=killed
        )

    assert jobs.claim(sessions=state.sessions, job_id=job.id, worker="doomed:1")
    with pytest.raises(Killed):
        jobs.run_claimed(
            sessions=state.sessions, job_id=job.id, handlers={TRAIN_KIND: dies_after_publish}
        )
    assert store_versions(settings, "once") == ["1.0.0"]
    staged = get_run(client, admin_headers, job.id)
    assert staged["status"] == "running" and staged["result"]["version"] == "1.0.0"

    with state.sessions() as db:  # its lease expires; a sweep queues it again
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        db.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=long_ago))
        db.commit()
    assert jobs.sweep(sessions=state.sessions).requeued == 1
    trained: list[str] = []
    handlers = job_handlers(state)
    real = handlers[TRAIN_KIND]

    def watched(ctx):
        ctx.on_progress = lambda p: trained.append(str(p.get("stage")))
        return real(ctx)

    assert jobs.claim(sessions=state.sessions, job_id=job.id, worker="next:2")
    done = jobs.run_claimed(sessions=state.sessions, job_id=job.id, handlers={TRAIN_KIND: watched})
    assert done.status == "succeeded" and done.attempts == 2
    assert done.result == staged["result"]
    assert trained == []  # no epoch ran again
    assert store_versions(settings, "once") == ["1.0.0"]  # published once
