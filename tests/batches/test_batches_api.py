"""Batches through the API: a ZIP archive (or stored images) accepted at once with 202 and a
Location, each image becoming a case as with predict; refusals that store nothing (bad archives,
ZIP bombs, unknown models); idempotency keys; list, read and cancel; roles."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from clearscan.batches import service
from tests.batches.helpers import (
    BATCHES,
    audit_actions,
    get_batch,
    images,
    make_zip,
    stored,
    submit_zip,
    wait_batch,
)
from tests.conftest import chest_like, png_bytes

NOTHING = {"batches": 0, "items": 0, "cases": 0}


@pytest.fixture
def no_worker(app: FastAPI, client: TestClient) -> None:
    """Stop the server's job worker: submitted batches stay queued."""
    app.state.clearscan.jobs.stop()


def blob_files(app: FastAPI) -> int:
    root = app.state.clearscan.settings.blob_dir
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


# --- accepting a batch --------------------------------------------------------------------------


def test_an_archive_is_accepted_at_once_and_each_image_becomes_a_case(
    app, client, clinician_headers, admin_headers
):
    files = images(4)
    r = submit_zip(client, clinician_headers, make_zip(files), model="pneumonia-cxr")
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"{BATCHES}/{body['id']}" == body["url"]
    assert body["progress"]["total"] == 4 and body["model"] == "pneumonia-cxr"
    assert body["source"] == "archive" and body["explain"] is True
    assert body["status"] in ("queued", "running", "succeeded")

    batch = wait_batch(client, clinician_headers, body["id"])
    assert batch["status"] == "succeeded", batch["error"]
    assert batch["progress"] == {"total": 4, "done": 4, "succeeded": 4, "failed": 0, "queued": 0}
    assert [it["name"] for it in batch["items"]] == list(files)
    assert [it["index"] for it in batch["items"]] == [0, 1, 2, 3]
    assert stored(app) == {"batches": 1, "items": 4, "cases": 4}
    for it in batch["items"]:
        assert it["status"] == "succeeded" and it["error"] is None
        assert it["model"] == "pneumonia-cxr:1.0.0" and it["top_label"] in ("normal", "pneumonia")
        case = client.get(it["case_url"], headers=clinician_headers)
        assert case.status_code == 200
        case = case.json()
        assert case["note"].startswith(f"Batch {body['id'][:8]}, image {it['index'] + 1} of 4")
        assert len(case["images"]) == 1
        pred = case["images"][0]["predictions"][0]
        assert pred["top_label"] == it["top_label"] and pred["heatmap_url"]
    # the job row's own progress, as the worker reported it
    with app.state.clearscan.sessions() as db:
        from clearscan.jobs.models import Job

        job = db.get(Job, body["id"])
        assert job.progress == {"done": 4, "total": 4, "failed": 0}
        assert job.result == {"total": 4, "succeeded": 4, "failed": 0}

    submitted = audit_actions(client, admin_headers, "batch.submit")
    assert len(submitted) == 1 and submitted[0]["object_id"] == body["id"]
    assert submitted[0]["details"] == {
        "model": "pneumonia-cxr",
        "explain": True,
        "source": "archive",
        "items": 4,
    }
    # the cases are the submitter's, audited as theirs and tied to the batch
    made = audit_actions(client, admin_headers, "case.create")
    assert len(made) == 4
    assert {e["actor"] for e in made} == {submitted[0]["actor"]}
    assert {e["request_id"] for e in made} == {body["id"]}


def test_an_image_that_does_not_decode_fails_its_item_and_the_batch_goes_on(
    app, client, clinician_headers
):
    broken = png_bytes(chest_like(128, 7))[:60]  # a PNG signature, then the data stops
    files = {"a.png": png_bytes(chest_like(128, 1)), "broken.png": broken}
    files["c.png"] = png_bytes(chest_like(128, 3))
    r = submit_zip(client, clinician_headers, make_zip(files), explain=False)
    assert r.status_code == 202, r.text
    batch = wait_batch(client, clinician_headers, r.json()["id"])
    assert batch["status"] == "succeeded"
    assert [it["status"] for it in batch["items"]] == ["succeeded", "failed", "succeeded"]
    failed = batch["items"][1]
    assert failed["case_id"] is None and failed["error"]
    assert batch["progress"]["failed"] == 1 and batch["progress"]["succeeded"] == 2
    assert stored(app)["cases"] == 2


def test_a_pinned_version_analyses_every_image(client, admin_headers):
    r = submit_zip(client, admin_headers, make_zip(images(2)), model="pneumonia-cxr:1.0.0")
    assert r.status_code == 202, r.text
    assert r.json()["model"] == "pneumonia-cxr:1.0.0"
    batch = wait_batch(client, admin_headers, r.json()["id"])
    assert [it["model"] for it in batch["items"]] == ["pneumonia-cxr:1.0.0"] * 2


def test_stored_images_as_a_batch(app, client, clinician_headers):
    ids = []
    for i in range(2):
        r = client.post(
            "/api/v1/predict",
            headers=clinician_headers,
            files=[("file", (f"{i}.png", png_bytes(chest_like(128, i)), "image/png"))],
            data={"explain": "false"},
        )
        assert r.status_code == 200, r.text
        case = client.get(f"/api/v1/cases/{r.json()['case_id']}", headers=clinician_headers)
        ids.append(case.json()["images"][0]["id"])
    r = client.post(
        BATCHES, headers=clinician_headers, json={"images": ids[::-1], "explain": False}
    )
    assert r.status_code == 202, r.text
    assert r.json()["source"] == "images" and r.json()["progress"]["total"] == 2
    batch = wait_batch(client, clinician_headers, r.json()["id"])
    assert batch["status"] == "succeeded"
    assert [it["source_image_id"] for it in batch["items"]] == ids[::-1]
    assert all(it["name"] is None and it["case_id"] for it in batch["items"])
    assert stored(app)["cases"] == 4


# --- refusals store nothing ---------------------------------------------------------------------


BAD_ARCHIVES = {
    "not-a-zip": (b"just some bytes", 422, "not a readable ZIP archive"),
    "not-an-image": (
        make_zip({"a.png": png_bytes(chest_like(64, 1)), "b.txt": b"hello, not an image"}),
        415,
        "entry 2 of the archive is not an image",
    ),
    "unsafe-path": (
        make_zip({"../../etc/a.png": png_bytes(chest_like(64, 1))}),
        422,
        "unsafe path",
    ),
    "empty": (make_zip({"folder/": b""}), 422, "holds no images"),
    "too-many": (make_zip({f"{i}.png": b"x" for i in range(1001)}), 413, "more than 1,000"),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_and_nothing_is_stored(
    app, client, clinician_headers, admin_headers, case
):
    data, status, words = BAD_ARCHIVES[case]
    r = submit_zip(client, clinician_headers, data)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert stored(app) == NOTHING
    assert audit_actions(client, admin_headers, "batch.submit") == []


def test_a_zip_bomb_is_refused_before_anything_is_written(app, client, clinician_headers):
    bomb = make_zip(
        {"a.png": png_bytes(chest_like(64, 1)), "b.dcm": b"\x00" * (40 << 20)},
        method=8,  # deflate: 40 MB of zeros in about 40 KB
    )
    assert len(bomb) < 200_000
    before = blob_files(app)
    r = submit_zip(client, clinician_headers, bomb)
    assert r.status_code == 413, r.text
    assert "ZIP bomb" in r.json()["detail"]
    assert stored(app) == NOTHING
    assert blob_files(app) == before


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("no-such-model", 404, "no-such-model"),
        ("pneumonia-cxr:9.9.9", 404, "9.9.9"),
        ("Not A Name", 422, "NAME or NAME:VERSION"),
    ],
)
def test_an_unknown_model_is_refused_and_nothing_is_stored(
    app, client, clinician_headers, model, status, words
):
    r = submit_zip(client, clinician_headers, make_zip(images(1)), model=model)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert stored(app) == NOTHING


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"images": ["no-such-image"]}, "image 1 of the list ('no-such-image') does not exist"),
        ({"images": []}, "images"),
        ({"images": ["x"], "surprise": 1}, "surprise"),
        ({"model": "pneumonia-cxr"}, "images"),
    ],
)
def test_a_bad_list_of_stored_images_is_refused(app, client, clinician_headers, body, words):
    r = client.post(BATCHES, headers=clinician_headers, json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert stored(app) == NOTHING


def test_no_archive_and_no_json(app, client, clinician_headers):
    r = client.post(BATCHES, headers=clinician_headers, data={"model": "pneumonia-cxr"})
    assert r.status_code == 422 and "ZIP archive" in r.json()["detail"]
    r = client.post(
        BATCHES,
        headers={**clinician_headers, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 422
    assert stored(app) == NOTHING


def test_a_crash_before_the_commit_leaves_no_batch(
    app, client, clinician_headers, admin_headers, monkeypatch
):
    """The job row, every item and the audit event are one transaction: a process that dies
    after writing them but before the commit leaves nothing of the batch (blobs aside)."""
    written = {}

    def crash(*, db, queue, jobs):
        written["items"] = db.execute(text("SELECT count(*) FROM batch_items")).scalar()
        raise RuntimeError("the process died here")

    monkeypatch.setattr(service, "commit_and_deliver", crash)
    r = submit_zip(client, clinician_headers, make_zip(images(3)))
    assert r.status_code == 500
    assert written == {"items": 3}  # all of it was written in the transaction...
    assert stored(app) == NOTHING  # ...and none of it outlived the crash
    assert audit_actions(client, admin_headers, "batch.submit") == []


# --- idempotency --------------------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_same_batch(
    app, client, clinician_headers, make_user, admin_headers, no_worker
):
    data = make_zip(images(2))
    key = {"Idempotency-Key": "upload-2026-12-01-a"}
    first = submit_zip(client, {**clinician_headers, **key}, data)
    assert first.status_code == 202, first.text
    again = submit_zip(client, {**clinician_headers, **key}, data)
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    assert stored(app) == {"batches": 1, "items": 2, "cases": 0}
    assert len(audit_actions(client, admin_headers, "batch.submit")) == 1
    # the key is the first request's: another user cannot take it over
    other = submit_zip(client, {**make_user("clinician"), **key}, data)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    # the stored-images form answers the same way
    again = client.post(BATCHES, headers={**clinician_headers, **key}, json={"images": ["x"]})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    # without a key, every request is a new batch
    assert submit_zip(client, clinician_headers, data).json()["id"] != first.json()["id"]
    assert stored(app)["batches"] == 2


def test_a_key_committed_by_a_racing_request_wins(app, client, clinician_headers, monkeypatch):
    """Two requests with one key: the second passes the look-up before the first commits, then
    meets the unique key at its insert; it answers with the first one's batch."""
    app.state.clearscan.jobs.stop()
    key = {"Idempotency-Key": "raced"}
    first = submit_zip(client, {**clinician_headers, **key}, make_zip(images(1)))
    assert first.status_code == 202
    looked: list[str] = []
    real = service._by_key

    def late(*, db, key, user):
        looked.append(key)
        return None if len(looked) == 1 else real(db=db, key=key, user=user)

    monkeypatch.setattr(service, "_by_key", late)
    second = submit_zip(client, {**clinician_headers, **key}, make_zip(images(2)))
    assert second.status_code == 202, second.text
    assert second.json()["id"] == first.json()["id"] and looked == ["raced", "raced"]
    assert stored(app) == {"batches": 1, "items": 1, "cases": 0}


# --- list, read, cancel -------------------------------------------------------------------------


def test_list_newest_first_paged_and_filtered(client, clinician_headers, viewer_headers, no_worker):
    ids = [
        submit_zip(client, clinician_headers, make_zip(images(1))).json()["id"] for _ in range(3)
    ]
    page = client.get(BATCHES, headers=viewer_headers, params={"limit": 2}).json()
    assert page["total"] == 3 and [b["id"] for b in page["items"]] == ids[::-1][:2]
    rest = client.get(BATCHES, headers=viewer_headers, params={"limit": 2, "offset": 2}).json()
    assert [b["id"] for b in rest["items"]] == ids[:1]
    assert "items" not in page["items"][0]  # the list has no per-item results
    queued = client.get(BATCHES, headers=viewer_headers, params={"status": "queued"}).json()
    assert queued["total"] == 3
    done = client.get(BATCHES, headers=viewer_headers, params={"status": "succeeded"}).json()
    assert done["total"] == 0
    assert client.get(BATCHES, headers=viewer_headers, params={"status": "x"}).status_code == 422
    assert client.get(BATCHES, headers=viewer_headers, params={"limit": 0}).status_code == 422
    one = get_batch(client, viewer_headers, ids[0])
    assert one["status"] == "queued" and [it["status"] for it in one["items"]] == ["queued"]
    assert client.get(f"{BATCHES}/{'0' * 32}", headers=viewer_headers).status_code == 404
    assert client.get(f"{BATCHES}/{'0' * 300}", headers=viewer_headers).status_code == 404


def test_cancel_a_queued_batch(
    client, clinician_headers, make_user, admin_headers, viewer_headers, no_worker
):
    mine = submit_zip(client, clinician_headers, make_zip(images(2))).json()["id"]
    other = make_user("clinician")
    r = client.post(f"{BATCHES}/{mine}/cancel", headers=other)
    assert r.status_code == 403 and "submitted" in r.json()["detail"]
    assert client.post(f"{BATCHES}/{mine}/cancel", headers=viewer_headers).status_code == 403
    r = client.post(f"{BATCHES}/{mine}/cancel", headers=clinician_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["error"] == "cancelled before any image was analysed"
    again = client.post(f"{BATCHES}/{mine}/cancel", headers=clinician_headers)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.post(f"{BATCHES}/{'0' * 32}/cancel", headers=admin_headers).status_code == 404
    # an admin may cancel anyone's batch
    theirs = submit_zip(client, other, make_zip(images(1))).json()["id"]
    r = client.post(f"{BATCHES}/{theirs}/cancel", headers=admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = audit_actions(client, admin_headers, "batch.cancel")
    assert [e["object_id"] for e in events] == [theirs, mine]
    assert events[0]["actor"] == "admin"


def test_roles(app, client, viewer_headers, make_user):
    data = make_zip(images(1))
    assert submit_zip(client, {}, data).status_code == 401
    assert submit_zip(client, viewer_headers, data).status_code == 403
    assert client.post(BATCHES, headers=viewer_headers, json={"images": ["x"]}).status_code == 403
    assert stored(app) == NOTHING
    assert client.get(BATCHES).status_code == 401
    assert client.get(BATCHES, headers=viewer_headers).status_code == 200
    r = submit_zip(client, make_user("clinician"), data)
    assert r.status_code == 202
    assert client.get(r.headers["location"], headers=viewer_headers).status_code == 200
