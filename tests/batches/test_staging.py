"""An archive's images are raw uploads (DICOM with patient identifiers): they are staged, never
stored as blobs, and deleted once used: when their item is analysed, when the batch is cancelled
or refused, and by the staging sweep for what a batch that ended otherwise left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi import FastAPI

from clearscan.batches import runner, service
from clearscan.bootstrap import STAGING_GRACE_S, sweep_staging
from tests.batches.helpers import BATCHES, get_batch, make_zip, submit_zip, wait_batch
from tests.conftest import chest_like, dicom_bytes, png_bytes

PHI = (b"Doe^Jane", b"PID-4711")  # dicom_bytes' patient name and ID


def archive() -> bytes:
    return make_zip(
        {
            "a.dcm": dicom_bytes(chest_like(128, 1)),
            "b.png": png_bytes(chest_like(128, 2)),
            "c.dcm": dicom_bytes(chest_like(128, 3)),
        }
    )


def staging(app: FastAPI) -> Path:
    return Path(app.state.clearscan.settings.blob_dir) / ".staging"


def staged(app: FastAPI) -> list[str]:
    root = staging(app)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def files_holding_phi(root: Path) -> list[str]:
    """Every file under `root` (database, blobs, staging, temporary files) that holds the
    patient's name or ID."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and any(phi in p.read_bytes() for phi in PHI)
    ]


def age(app: FastAPI, keys: list[str], seconds: float) -> None:
    old = time.time() - seconds
    for key in keys:
        os.utime(staging(app) / key, (old, old))


def test_staged_until_analysed_then_gone_and_no_identifier_is_kept(app, client, clinician_headers):
    data_dir = app.state.clearscan.settings.data_dir
    app.state.clearscan.jobs.stop()  # hold the batch queued to look at what it staged
    r = submit_zip(client, clinician_headers, archive())
    assert r.status_code == 202, r.text
    assert len(staged(app)) == 3
    # the raw uploads are in the staging area only: no blob holds an identifier
    assert {p.split("/")[0] for p in files_holding_phi(data_dir)} == {"blobs"}
    assert all(p.startswith("blobs/.staging/") for p in files_holding_phi(data_dir))

    app.state.clearscan.jobs.start()
    batch = wait_batch(client, clinician_headers, r.json()["id"])
    assert batch["progress"]["succeeded"] == 3, batch
    assert staged(app) == []
    assert files_holding_phi(data_dir) == []  # cases keep de-identified images only
    case = client.get(batch["items"][0]["case_url"], headers=clinician_headers).json()
    assert case["patient_key"]  # the pseudonymous key links the patient's cases


def test_cancelling_a_queued_batch_discards_its_images(app, client, clinician_headers):
    app.state.clearscan.jobs.stop()
    batch_id = submit_zip(client, clinician_headers, archive()).json()["id"]
    assert len(staged(app)) == 3
    r = client.post(f"{BATCHES}/{batch_id}/cancel", headers=clinician_headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert staged(app) == []


def test_a_refused_or_repeated_submission_discards_what_it_staged(
    app, client, clinician_headers, monkeypatch
):
    app.state.clearscan.jobs.stop()
    key = {"Idempotency-Key": "the-same-upload"}
    first = submit_zip(client, {**clinician_headers, **key}, archive())
    kept = staged(app)
    assert first.status_code == 202 and len(kept) == 3
    again = submit_zip(client, {**clinician_headers, **key}, archive())
    assert again.json()["id"] == first.json()["id"]
    assert staged(app) == kept  # the replay's own copies are gone

    def crash(*, db, queue, jobs):
        raise RuntimeError("the process died here")

    monkeypatch.setattr(service, "commit_and_deliver", crash)
    assert submit_zip(client, clinician_headers, archive()).status_code == 500
    assert staged(app) == kept


def test_a_batch_that_stops_discards_the_images_it_will_never_analyse(
    app, client, clinician_headers, monkeypatch
):
    def gone(**kw):
        from clearscan.registry.errors import ModelNotFound

        raise runner.PredictRejected(404, "model pneumonia-cxr is gone") from ModelNotFound("x")

    monkeypatch.setattr(runner, "predict_images", gone)
    r = submit_zip(client, clinician_headers, archive())
    batch = wait_batch(client, clinician_headers, r.json()["id"])
    assert batch["status"] == "failed" and "is gone" in batch["error"]
    assert [it["status"] for it in batch["items"]] == ["queued"] * 3
    assert staged(app) == []


def test_an_item_whose_upload_is_gone_fails_with_the_reason(app, client, clinician_headers):
    """What a restore from a backup made while the batch was queued looks like: the item rows
    came back, the staging area did not."""
    app.state.clearscan.jobs.stop()
    batch_id = submit_zip(client, clinician_headers, archive()).json()["id"]
    (staging(app) / staged(app)[0]).unlink()
    app.state.clearscan.jobs.start()
    batch = wait_batch(client, clinician_headers, batch_id)
    statuses = sorted(it["status"] for it in batch["items"])
    assert statuses == ["failed", "succeeded", "succeeded"]
    failed = next(it for it in batch["items"] if it["status"] == "failed")
    assert "no longer staged" in failed["error"]
    assert staged(app) == []


def test_the_sweep_removes_only_what_no_job_needs(app, client, clinician_headers):
    state = app.state.clearscan
    state.jobs.stop()
    queued = submit_zip(client, clinician_headers, archive()).json()["id"]
    needed = staged(app)
    orphans = state.blobs.stage_batch([b"left by a killed worker", b"and another"])
    young = state.blobs.stage_batch([b"a submission not yet committed"])
    age(app, [*needed, *orphans], STAGING_GRACE_S + 60)

    assert sweep_staging(state) == 2
    assert staged(app) == sorted([*needed, *young])
    assert get_batch(client, clinician_headers, queued)["status"] == "queued"

    # once the batch has ended (here: failed by the job system), its images go too
    from clearscan.jobs.models import Job

    with state.sessions() as db:
        db.get(Job, queued).status = "failed"
        db.commit()
    assert sweep_staging(state) == 3
    assert staged(app) == young
