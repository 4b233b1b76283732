"""The training pages (/training, /training/{id}): starting a run through the form, watching it
(the page's live numbers come from the JSON API the page's script polls), the result with its
metrics and the inactive model version, refused submissions, roles, cancellation and CSRF."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import update

from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.training.recipes import RECIPES
from clearscan.web.pages import training as training_pages
from clearscan.web.templating import STATIC_DIR
from tests.training.test_training_runs import blob_zip, get_run, total_runs, upload, wait_run
from tests.web.test_dataset_pages import assert_no_inline_code
from tests.web.test_pages import csrf_of

RUN_URL = re.compile(r"/training/([0-9a-f]{32})")
SCRIPT = '<script src="/static/training.js'
DASH = "\u2013"


def start_form(c: TestClient, *, token: str | None = None, **fields: str) -> Response:
    form = {"csrf_token": csrf_of(c.get("/training").text) if token is None else token, **fields}
    return c.post("/training", data=form, follow_redirects=False)


def run_id_of(r: Response) -> str:
    assert r.status_code == 303, r.text
    m = RUN_URL.fullmatch(r.headers["location"])
    assert m, r.headers["location"]
    return m.group(1)


def cancel_form(c: TestClient, run_id: str, *, token: str | None = None) -> Response:
    if token is None:
        token = csrf_of(c.get(f"/training/{run_id}").text)
    return c.post(f"/training/{run_id}/cancel", data={"csrf_token": token}, follow_redirects=False)


def audit_events(client: TestClient, headers: dict[str, str], action: str) -> list[dict]:
    r = client.get("/api/v1/audit", headers=headers, params={"action": action})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def field(html: str, testid: str) -> str:
    m = re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', html)
    assert m, f"no {testid} on the page"
    return m.group(1).strip()


def table_csv(rows: int = 80, seed: int = 0) -> bytes:
    """A table whose label follows one numeric column (and a noise column and a category)."""
    rng = np.random.default_rng(seed)
    lines = ["signal,noise,site,label"]
    for i in range(rows):
        sick = i % 2 == 1
        lines.append(
            f"{rng.normal(1.5 if sick else 0.0, 1.0):.3f},{rng.normal():.3f},"
            f"{'ab'[i % 3 == 0]},{'sick' if sick else 'well'}"
        )
    return ("\n".join(lines) + "\n").encode()


# --- tests --------------------------------------------------------------------------------------


def test_admin_trains_through_the_form_and_sees_the_result(sign_in, client, admin_headers):
    ds = upload(client, admin_headers, "blobs", blob_zip(per_class=16))
    admin = sign_in("admin")
    # the dataset page links to the form, with the dataset chosen
    page = admin.get("/datasets/blobs")
    assert 'href="/training?dataset=blobs#start-run"' in page.text
    form = admin.get("/training?dataset=blobs")
    assert form.status_code == 200
    assert 'data-testid="nav-training"' in form.text and 'aria-current="page"' in form.text
    assert 'data-testid="training-form"' in form.text
    assert '<option value="blobs" selected>' in form.text
    for recipe in ("cnn-small", "cnn-small-64", "auto", "logistic-regression"):
        assert f'<option value="{recipe}">' in form.text
    assert 'data-testid="training-empty"' in form.text
    assert_no_inline_code(form)

    r = start_form(admin, dataset="blobs", recipe="default", epochs="1", seed="0", model_name="")
    run_id = run_id_of(r)
    page = admin.get(f"/training/{run_id}")
    assert page.status_code == 200
    assert field(page.text, "run-status") in ("queued", "running", "succeeded")
    assert 'data-testid="run-dataset">blobs<' in page.text
    if field(page.text, "run-status") != "succeeded":
        # a live page: the script polls the run's JSON with the session cookie
        assert SCRIPT in page.text
        assert f'data-poll-url="/api/v1/training-runs/{run_id}"' in page.text
        assert 'data-testid="run-bar"' in page.text
    assert_no_inline_code(page)
    polled = admin.get(f"/api/v1/training-runs/{run_id}")
    assert polled.status_code == 200 and polled.json()["id"] == run_id
    assert polled.json()["params"] == {"dataset": "blobs", "epochs": 1, "seed": 0}

    run = wait_run(client, admin_headers, run_id, timeout=120)
    assert run["status"] == "succeeded", run["error"]
    page = admin.get(f"/training/{run_id}")
    html = page.text
    assert field(html, "run-status") == "succeeded"
    assert SCRIPT not in html  # nothing to watch any more
    assert 'data-testid="training-result"' in html
    metrics = re.search(r'data-testid="training-metrics">(.*?)</table>', html, re.S)
    assert metrics is not None
    val = run["result"]["val_metrics"]
    for title, key in (
        ("AUC", "auc"),
        ("Accuracy", "accuracy"),
        ("Balanced accuracy", "balanced_accuracy"),
    ):
        assert re.search(
            rf">{title}</th><td class=\"num mono\">{val[key]:.3f}<", metrics.group(1)
        ), (title, metrics.group(1))
    assert f">{val['n']}<" in metrics.group(1)
    assert 'href="/models/blobs"' in html and 'data-testid="result-model">blobs:1.0.0<' in html
    note = re.search(r'data-testid="result-model-note">(.*?)</div>\s*</div>', html, re.S)
    assert note is not None and "inactive" in note.group(1) and "activates" in note.group(1)
    assert "P(dark)" in html  # the threshold, on the second class
    assert ds["content_hash"] in html
    # the chart and the per-epoch table, from the run's history
    assert 'data-testid="run-chart"' in html
    assert re.search(r'<polyline class="chart-line chart-loss" points="[\d.]+,[\d.]+"', html)
    assert re.search(r'<polyline class="chart-line chart-auc" points="[\d.]+,[\d.]+"', html)
    history = re.search(r"data-history-rows>(.*?)</tbody>", html, re.S)
    assert history is not None and history.group(1).count("<tr>") == 1
    assert field(html, "run-epoch") == "1 / 1"
    assert 'data-testid="cancel-form"' not in html
    assert_no_inline_code(page)

    # the list shows the run, newest first, with its model
    listing = admin.get("/training")
    assert listing.text.count('data-testid="training-row"') == 1
    row = re.search(rf'data-run="{run_id}" data-status="succeeded">(.*?)</tr>', listing.text, re.S)
    assert row is not None
    assert ">blobs<" in row.group(1) and ">cnn-small<" in row.group(1)
    assert 'href="/models/blobs"' in row.group(1) and "done · 1 epoch" in row.group(1)
    assert f">{run['progress']['best_val_auc']:.3f}<" in row.group(1)
    assert f"1{DASH}1 of 1 runs" in listing.text
    assert_no_inline_code(listing)

    event = audit_events(client, admin_headers, "training.submit")[0]
    assert event["object_id"] == run_id and event["actor"] == "admin"
    assert event["details"]["dataset_hash"] == ds["content_hash"]
    assert event["details"]["via"] == "web" and event["details"]["epochs"] == 1

    # once an admin activates the version, the run page says so
    act = client.post("/api/v1/models/blobs/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text
    assert "now the active version" in admin.get(f"/training/{run_id}").text


BAD_FORMS = {
    "unknown-dataset": ({"dataset": "no-such-set"}, "no-such-set"),
    "no-dataset": ({"dataset": ""}, "Choose a dataset"),
    "epochs-0": ({"dataset": "blobs", "epochs": "0"}, "Epochs must be between 1 and 500"),
    "epochs-501": ({"dataset": "blobs", "epochs": "501"}, "Epochs must be between 1 and 500"),
    "epochs-text": ({"dataset": "blobs", "epochs": "lots"}, "Epochs: give a whole number"),
    "seed-negative": ({"dataset": "blobs", "seed": "-1"}, "Seed: give a whole number"),
    "unknown-recipe": ({"dataset": "blobs", "recipe": "resnet-9000"}, "resnet-9000"),
    "table-recipe": ({"dataset": "blobs", "recipe": "random-forest"}, "cnn-small"),
    "bad-model-name": ({"dataset": "blobs", "model_name": "Bad Name"}, "Model name: lower-case"),
}


@pytest.mark.parametrize("case", list(BAD_FORMS))
def test_bad_submission_rerenders_with_422_and_queues_nothing(sign_in, client, admin_headers, case):
    upload(client, admin_headers, "blobs", blob_zip(per_class=4))
    admin = sign_in("admin")
    fields, words = BAD_FORMS[case]
    r = start_form(admin, **{"epochs": "", "seed": "0", "model_name": "", **fields})
    assert r.status_code == 422, r.text
    assert 'data-testid="error-message"' in r.text
    assert words in field(r.text, "error-message"), field(r.text, "error-message")
    assert 'data-testid="training-form"' in r.text  # the form again, keeping what was typed
    for key, value in fields.items():
        if key in ("epochs", "seed", "model_name") and value:
            assert f'value="{value}"' in r.text, key
    assert_no_inline_code(r)
    assert total_runs(client, admin_headers) == 0
    assert audit_events(client, admin_headers, "training.submit") == []


def test_viewer_and_clinician_see_runs_but_no_form(sign_in, client, admin_headers, no_worker):
    upload(client, admin_headers, "blobs", blob_zip(per_class=4))
    admin = sign_in("admin")
    run_id = run_id_of(start_form(admin, dataset="blobs", epochs="1"))
    for role in ("viewer", "clinician"):
        c = sign_in(role)
        page = c.get("/training")
        assert page.status_code == 200
        assert 'data-testid="nav-training"' in page.text
        assert 'data-testid="training-form"' not in page.text
        assert f'data-run="{run_id}" data-status="queued"' in page.text
        assert "waiting for the worker" in page.text
        detail = c.get(f"/training/{run_id}")
        assert detail.status_code == 200 and field(detail.text, "run-status") == "queued"
        assert 'data-testid="cancel-form"' not in detail.text  # only admins cancel
        assert SCRIPT in detail.text  # anyone may watch
        assert 'data-testid="train-dataset"' not in c.get("/datasets/blobs").text

        token = csrf_of(page.text)
        r = start_form(c, token=token, dataset="blobs", epochs="1")
        assert r.status_code == 403 and 'data-testid="error-page"' in r.text
        r = cancel_form(c, run_id, token=token)
        assert r.status_code == 403 and 'data-testid="error-page"' in r.text
    assert total_runs(client, admin_headers) == 1
    assert get_run(client, admin_headers, run_id)["status"] == "queued"
    denied = audit_events(client, admin_headers, "access.denied")
    paths = {(e["details"]["path"], e["details"]["via"]) for e in denied}
    assert ("/training", "web") in paths and (f"/training/{run_id}/cancel", "web") in paths


@pytest.mark.parametrize("token", ["", "0" * 64, "other-session"])
def test_forms_without_valid_csrf_are_refused(sign_in, client, admin_headers, no_worker, token):
    upload(client, admin_headers, "blobs", blob_zip(per_class=4))
    admin = sign_in("admin")
    run_id = run_id_of(start_form(admin, dataset="blobs", epochs="1"))
    if token == "other-session":
        token = csrf_of(sign_in("admin").get("/training").text)
    r = start_form(admin, token=token, dataset="blobs", epochs="1")
    assert r.status_code == 403 and "could not be verified" in r.text
    r = cancel_form(admin, run_id, token=token)
    assert r.status_code == 403 and "could not be verified" in r.text
    missing = admin.post("/training", data={"dataset": "blobs"}, follow_redirects=False)
    assert missing.status_code == 403
    missing = admin.post(f"/training/{run_id}/cancel", follow_redirects=False)
    assert missing.status_code == 403
    assert total_runs(client, admin_headers) == 1
    assert get_run(client, admin_headers, run_id)["status"] == "queued"
    assert audit_events(client, admin_headers, "training.cancel") == []


def test_cancel_queued_and_running_runs_through_the_form(
    sign_in, client, admin_headers, settings, monkeypatch
):
    # no early stopping: 200 epochs would take minutes, so only a cancellation ends it early
    monkeypatch.setitem(RECIPES, "cnn-small", replace(RECIPES["cnn-small"], patience=10_000))
    upload(client, admin_headers, "blobs", blob_zip(per_class=16))
    admin = sign_in("admin")
    slow = run_id_of(start_form(admin, dataset="blobs", epochs="200", model_name="slow"))
    wait_run(
        client,
        admin_headers,
        slow,
        until=lambda x: x["status"] == "running" and len(x["progress"].get("history", [])) >= 1,
        timeout=90,
    )
    page = admin.get(f"/training/{slow}")
    html = page.text
    assert field(html, "run-status") == "running" and SCRIPT in html
    assert field(html, "run-stage") == "training"
    assert re.fullmatch(r"\d+ / 200", field(html, "run-epoch"))
    assert re.search(r'<progress class="run-bar" data-field="bar" max="200" value="\d+"', html)
    assert re.search(r'<polyline class="chart-line chart-auc" points="[\d.]+,[\d.]+', html)
    assert 'data-testid="cancel-form"' in html
    assert_no_inline_code(page)

    # the worker is busy: a second run waits in the queue and is cancelled at once
    queued = run_id_of(start_form(admin, dataset="blobs", epochs="1", model_name="queued"))
    assert get_run(client, admin_headers, queued)["status"] == "queued"
    r = cancel_form(admin, queued)
    assert r.status_code == 303 and r.headers["location"] == f"/training/{queued}?done=cancel"
    page = admin.get(r.headers["location"])
    assert field(page.text, "run-status") == "cancelled"
    assert field(page.text, "success-message") == (
        "Training run cancelled before it started; nothing was registered."
    )
    assert 'data-testid="cancel-form"' not in page.text
    assert SCRIPT not in page.text

    # the running one stops at its next progress report
    r = cancel_form(admin, slow)
    assert r.status_code == 303
    page = admin.get(r.headers["location"])
    assert 'data-testid="cancel-form"' not in page.text
    assert field(page.text, "run-status") in ("running", "cancelled")
    if field(page.text, "run-status") == "running":
        assert "Cancellation requested" in field(page.text, "success-message")
        assert SCRIPT in page.text
    else:
        assert field(page.text, "success-message").startswith("Training run cancelled;")
    run = wait_run(client, admin_headers, slow, timeout=60)
    assert run["status"] == "cancelled" and run["progress"]["epoch"] < 200
    page = admin.get(f"/training/{slow}")
    assert field(page.text, "run-status") == "cancelled"
    assert 'data-testid="run-cancelled"' in page.text and "nothing was registered" in page.text
    assert 'data-testid="training-result"' not in page.text
    listing = admin.get("/training").text
    assert listing.count('data-status="cancelled"') == 2
    assert "stopped at epoch" in listing

    # an ended run cannot be cancelled again; nothing was registered
    again = cancel_form(admin, slow)
    assert again.status_code == 409 and "already cancelled" in field(again.text, "error-message")
    for name in ("slow", "queued"):
        assert not (settings.data_dir / "models" / name).exists()
    events = audit_events(client, admin_headers, "training.cancel")
    assert sorted(e["object_id"] for e in events) == sorted([slow, queued])
    assert all(e["details"]["via"] == "web" for e in events)


def test_failed_run_shows_its_error(sign_in, client, admin_headers, app, no_worker):
    upload(client, admin_headers, "blobs", blob_zip(per_class=4))
    admin = sign_in("admin")
    run_id = run_id_of(start_form(admin, dataset="blobs", epochs="3"))
    state = app.state.clearscan
    with state.sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == run_id)
            .values(
                status="failed",
                error="interrupted: the process running it stopped <b>",
                progress={"stage": "training", "epoch": 2, "epochs": 3},
                finished_at=datetime.now(UTC),
            )
        )
        db.commit()
    page = admin.get(f"/training/{run_id}")
    assert page.status_code == 200 and field(page.text, "run-status") == "failed"
    assert "Training failed:" in page.text and "stopped &lt;b&gt;" in page.text
    assert SCRIPT not in page.text and 'data-testid="cancel-form"' not in page.text
    assert "stopped at epoch 2/3" in admin.get("/training").text
    assert_no_inline_code(page)


def test_table_run_shows_cross_validation_and_feature_importance(sign_in, client, admin_headers):
    upload(client, admin_headers, "vitals", table_csv(), filename="v.csv", target="label")
    admin = sign_in("admin")
    run_id = run_id_of(start_form(admin, dataset="vitals", recipe="auto", seed="3"))
    run = wait_run(client, admin_headers, run_id, timeout=120)
    assert run["status"] == "succeeded", run["error"]
    page = admin.get(f"/training/{run_id}")
    html = page.text
    assert 'data-testid="run-chart"' not in html  # no epochs for a table
    assert html.count('data-testid="cv-row"') == 3
    chosen = run["result"]["recipe"]
    row = re.search(
        rf'data-testid="cv-row"><th scope="row" class="mono">{chosen}</th>(.*?)</tr>', html
    )
    assert row is not None and ">chosen<" in row.group(1)
    rows = re.findall(r'data-testid="importance-row">\s*<th scope="row" class="mono">(\w+)<', html)
    assert rows and rows[0] == run["result"]["feature_importance"][0]["feature"]
    assert 'data-testid="training-metrics"' in html and 'href="/models/vitals"' in html
    assert_no_inline_code(page)


def test_unknown_run_is_a_404_page(sign_in, app, no_worker):
    admin = sign_in("admin")
    with app.state.clearscan.sessions() as db:  # a job of another kind is no training run
        other = jobs.submit(db=db, kind="evaluate", params={}, actor="admin")
        db.commit()
        other_id = other.id
    token = csrf_of(admin.get("/training").text)
    for ref in ("0" * 32, "no-such-run", other_id):
        r = admin.get(f"/training/{ref}")
        assert r.status_code == 404 and 'data-testid="error-page"' in r.text
        assert "Training run not found" in r.text
        r = cancel_form(admin, ref, token=token)
        assert r.status_code == 404 and "Training run not found" in r.text


def test_training_pages_need_sign_in(client):
    for path in ("/training", "/training/anything"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    for path in ("/training", "/training/anything/cancel"):
        r = client.post(path, data={"dataset": "x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"


def test_run_list_pagination(sign_in, client, admin_headers, no_worker, monkeypatch):
    monkeypatch.setattr(training_pages, "PAGE_SIZE", 1)
    upload(client, admin_headers, "blobs", blob_zip(per_class=4))
    admin = sign_in("admin")
    first = run_id_of(start_form(admin, dataset="blobs", epochs="1", model_name="first"))
    second = run_id_of(start_form(admin, dataset="blobs", epochs="1", model_name="second"))
    page1 = admin.get("/training")
    assert page1.text.count('data-testid="training-row"') == 1
    assert f'data-run="{second}"' in page1.text  # newest first
    assert f"1{DASH}1 of 2 runs" in page1.text and 'href="?page=2"' in page1.text
    page2 = admin.get("/training?page=2")
    assert f'data-run="{first}"' in page2.text and f"2{DASH}2 of 2 runs" in page2.text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_training_script_is_valid_javascript():
    script = STATIC_DIR / "training.js"
    done = subprocess.run(
        ["node", "--check", str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert "innerHTML" not in text and "eval(" not in text
