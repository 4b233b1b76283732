"""The batch pages (/batches, /batches/{id}): the list with a progress bar per batch (a running
and a finished one), one batch's per-image results linking to their cases, the submit form
(CSRF, refusals shown on the form, a form sent twice makes one batch), cancel, and roles."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from clearscan.jobs import service as jobs
from clearscan.web.templating import STATIC_DIR
from tests.batches.helpers import images, make_zip, stored
from tests.batches.test_runner import Killed, deliver, kill_before, run
from tests.web.test_dataset_pages import assert_no_inline_code
from tests.web.test_pages import csrf_of

BATCH_URL = re.compile(r"/batches/([0-9a-f]{32})\?done=submitted")
SCRIPT = '<script src="/static/batches.js'


def form_submit(
    c: TestClient,
    data: bytes | None,
    *,
    token: str | None = None,
    key: str | None = None,
    **fields: str,
) -> Response:
    page = c.get("/batches").text
    form = {
        "csrf_token": csrf_of(page) if token is None else token,
        "submit_key": key or re.search(r'name="submit_key" value="([^"]+)"', page).group(1),
        "model": "pneumonia-cxr",
        **fields,
    }
    # a browser sends an empty part, without a file name, when no file is chosen
    files = {"file": ("scans.zip", data, "application/zip") if data else ("", b"")}
    return c.post("/batches", data=form, files=files, follow_redirects=False)


def batch_id_of(r: Response) -> str:
    assert r.status_code == 303, r.text
    m = BATCH_URL.fullmatch(r.headers["location"])
    assert m, r.headers["location"]
    return m.group(1)


def row_of(html: str, batch_id: str) -> str:
    m = re.search(rf'<tr data-testid="batch-row" data-batch="{batch_id}"(.*?)</tr>', html, re.S)
    assert m, f"no row for {batch_id}"
    return m.group(1)


@pytest.fixture
def two_batches(app, sign_in, no_worker, monkeypatch) -> tuple[TestClient, str, str]:
    """A clinician's browser, a batch of 3 stopped after its first image (running: its worker
    died) and a finished batch of 2."""
    doc = sign_in("clinician")
    running = batch_id_of(form_submit(doc, make_zip(images(3))))
    finished = batch_id_of(form_submit(doc, make_zip(images(2)), explain="on"))
    state = app.state.clearscan
    assert jobs.claim(sessions=state.sessions, job_id=finished, worker="test")
    job = jobs.run_claimed(
        sessions=state.sessions, job_id=finished, handlers={"batch": lambda ctx: run(app, ctx)}
    )
    assert job.status == "succeeded"
    kill_before(1, monkeypatch)
    with pytest.raises(Killed):
        run(app, deliver(app, running))
    monkeypatch.undo()
    return doc, running, finished


def test_the_list_shows_each_batch_with_its_progress_bar(sign_in, two_batches):
    doc, running, finished = two_batches
    viewer = sign_in("viewer")
    for who in (doc, viewer):
        r = who.get("/batches")
        assert r.status_code == 200
        assert 'data-testid="nav-batches"' in r.text and 'aria-current="page"' in r.text
        assert r.text.count('data-testid="batch-row"') == 2
        live = row_of(r.text, running)
        assert live.startswith(' data-status="running" data-batch-live>')
        assert '<progress class="run-bar" data-field="bar" max="3" value="1"' in live
        assert ">1 of 3 images<" in live and f'href="/batches/{running}"' in live
        done = row_of(r.text, finished)
        assert done.startswith(' data-status="succeeded">')
        assert '<progress class="run-bar" data-field="bar" max="2" value="2"' in done
        assert ">2 of 2 images<" in done
        # newest first; the page follows its live batches through the API
        assert r.text.index(finished) < r.text.index(running)
        assert SCRIPT in r.text and 'data-poll-url="/api/v1/batches?limit=200"' in r.text
        assert_no_inline_code(r)
    assert 'data-testid="batch-form"' in doc.get("/batches").text
    page = viewer.get("/batches").text
    assert 'data-testid="batch-form"' not in page and "Batches appear here" not in page


def test_a_batch_page_links_each_image_to_its_case(sign_in, two_batches):
    doc, running, finished = two_batches
    r = doc.get(f"/batches/{running}")
    assert r.status_code == 200
    html = r.text
    assert 'data-testid="batch-status" role="status">running<' in html
    assert '<progress class="run-bar" data-field="bar" max="3" value="1"' in html
    assert SCRIPT in html and f'data-poll-url="/api/v1/batches/{running}"' in html
    rows = re.findall(r'<tr data-testid="batch-item" data-status="(\w+)">(.*?)</tr>', html, re.S)
    assert [s for s, _ in rows] == ["succeeded", "queued", "queued"]
    case = re.search(
        r'href="/cases/([0-9a-f-]{36})" class="mono" data-testid="item-case"', rows[0][1]
    )
    assert case and ">scan-0.png<" in rows[0][1]
    assert doc.get(f"/cases/{case.group(1)}").status_code == 200
    assert 'data-testid="cancel-batch"' in html  # the submitter may cancel it
    assert_no_inline_code(r)
    assert 'data-testid="cancel-batch"' not in sign_in("viewer").get(f"/batches/{running}").text

    r = doc.get(f"/batches/{finished}")
    html = r.text
    assert 'role="status">succeeded<' in html and SCRIPT not in html
    assert html.count('data-testid="item-case"') == 2
    assert 'data-testid="cancel-batch"' not in html
    assert_no_inline_code(r)


def test_submitting_through_the_form(app, sign_in, client, admin_headers, no_worker):
    doc = sign_in("clinician")
    page = doc.get("/batches")
    assert 'data-testid="batch-form"' in page.text and 'enctype="multipart/form-data"' in page.text
    assert '<option value="pneumonia-cxr" selected>' in page.text
    key = re.search(r'name="submit_key" value="([^"]+)"', page.text).group(1)
    r = form_submit(doc, make_zip(images(2)), key=key)
    batch_id = batch_id_of(r)
    shown = doc.get(r.headers["location"])
    assert "Batch queued" in shown.text and 'role="status">queued<' in shown.text
    # the same form sent again (a double click, a reload) is the same batch
    assert batch_id_of(form_submit(doc, make_zip(images(2)), key=key)) == batch_id
    assert stored(app) == {"batches": 1, "items": 2, "cases": 0}
    event = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "batch.submit"}
    ).json()["items"]
    assert len(event) == 1 and event[0]["details"]["via"] == "web"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (None, 422, "Choose a ZIP archive of images."),
        (b"not a zip", 422, "The upload is not a readable ZIP archive."),
        (make_zip({"x.txt": b"plain text"}), 415, "Entry 1 of the archive is not an image"),
    ],
)
def test_a_refused_submission_is_shown_on_the_form(app, sign_in, no_worker, data, status, words):
    doc = sign_in("clinician")
    r = form_submit(doc, data, explain="on")
    assert r.status_code == status, r.text
    message = re.search(r'data-testid="error-message">([^<]*)<', r.text)
    assert message and words in message.group(1)
    assert 'data-testid="batch-form"' in r.text
    assert_no_inline_code(r)
    assert stored(app)["batches"] == 0


def test_csrf_and_roles(app, sign_in, no_worker):
    doc = sign_in("clinician")
    r = form_submit(doc, make_zip(images(1)), token="forged")
    assert r.status_code == 403 and "could not be verified" in r.text
    viewer = sign_in("viewer")
    r = viewer.post("/batches", data={"csrf_token": csrf_of(viewer.get("/batches").text)})
    assert r.status_code == 403
    assert stored(app)["batches"] == 0
    r = doc.get(f"/batches/{'0' * 32}")
    assert r.status_code == 404 and "Batch not found" in r.text


def test_cancel_through_the_page(app, sign_in, no_worker):
    doc = sign_in("clinician")
    batch_id = batch_id_of(form_submit(doc, make_zip(images(2))))
    page = doc.get(f"/batches/{batch_id}").text
    assert 'data-testid="cancel-form"' in page
    other = sign_in("clinician")
    r = other.post(
        f"/batches/{batch_id}/cancel", data={"csrf_token": csrf_of(other.get("/batches").text)}
    )
    assert r.status_code == 403  # not theirs
    r = doc.post(f"/batches/{batch_id}/cancel", data={"csrf_token": "forged"})
    assert r.status_code == 403
    r = doc.post(
        f"/batches/{batch_id}/cancel", data={"csrf_token": csrf_of(page)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"/batches/{batch_id}?done=cancel"
    shown = doc.get(r.headers["location"]).text
    assert "Batch cancelled" in shown and 'role="status">cancelled<' in shown
    assert "cancelled before any image was analysed" in shown
    assert 'data-testid="cancel-form"' not in shown
    again = doc.post(f"/batches/{batch_id}/cancel", data={"csrf_token": csrf_of(page)})
    assert again.status_code == 409 and "already cancelled" in again.text


def test_the_script_writes_text_only():
    js = (STATIC_DIR / "batches.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert "textContent" in js
