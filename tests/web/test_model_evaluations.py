"""Evaluations on the model page (/models/{name}): the list of a model's evaluations (all
versions, newest first) with metrics, intervals and report links, the side-by-side comparison of
versions evaluated on the same dataset split, the admin's "Evaluate a version" form (queued job,
audit, 422 refusals that queue nothing), roles and CSRF."""

from __future__ import annotations

import html as html_lib
import re
import time

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import update

from clearscan.jobs.models import FINISHED, Job
from tests.training.test_evaluation import split_zip
from tests.training.test_training_runs import train, upload
from tests.web.test_dataset_pages import assert_no_inline_code
from tests.web.test_pages import csrf_of

EVALS = "/api/v1/evaluations"
BUNDLED = "pneumonia-cxr"
EVAL_ROW = re.compile(
    r'<tr data-testid="evaluation-row" data-eval="([0-9a-f]{32})" data-version="([^"]*)" '
    r'data-status="([^"]+)">(.*?)</tr>',
    re.S,
)


def evaluate_form(
    c: TestClient, model: str, *, token: str | None = None, **fields: str
) -> Response:
    if token is None:
        token = csrf_of(c.get(f"/models/{model}").text)
    return c.post(
        f"/models/{model}/evaluations",
        data={"csrf_token": token, **fields},
        follow_redirects=False,
    )


def eval_rows(html: str) -> list[dict[str, str]]:
    return [
        {"id": m[0], "version": m[1], "status": m[2], "cells": m[3]} for m in EVAL_ROW.findall(html)
    ]


def text_of(fragment: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    no_hidden = re.sub(r'<span class="visually-hidden">.*?</span>', "", fragment, flags=re.S)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", no_hidden)).split())


def cell(value: float, ci: list[float] | None = None) -> str:
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def wait_evaluations(c: TestClient, model: str, count: int, timeout: float = 180.0) -> list[dict]:
    """Poll the API (with the browser session) until `count` evaluations of `model` ended."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(EVALS, params={"model": model})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if len(items) >= count and all(j["status"] in FINISHED for j in items):
            return items
        assert time.monotonic() < deadline, [(j["status"], j["progress"]) for j in items]
        time.sleep(0.3)


def total_evaluations(client: TestClient, headers: dict[str, str]) -> int:
    r = client.get(EVALS, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total"]


# --- tests --------------------------------------------------------------------------------------


def test_admin_evaluates_two_versions_and_compares_them(sign_in, client, admin_headers):
    data, _ = split_zip({"train": 16, "val": 6, "test": 10})
    ds = upload(client, admin_headers, "blobs", data)
    for seed in (0, 7):
        train(client, admin_headers, dataset="blobs", epochs=1, seed=seed, model_name="lesions")
    admin, viewer = sign_in("admin"), sign_in("viewer")

    # freshly trained: no active version, yet the page (and its form) work
    page = admin.get("/models/lesions")
    assert page.status_code == 200, page.text
    assert 'data-testid="model-status">inactive<' in page.text
    assert 'data-testid="evaluations-card"' in page.text
    assert 'data-testid="evaluations-empty"' in page.text
    assert 'data-testid="comparison"' not in page.text
    form = re.search(r'data-testid="evaluate-form".*?</form>', page.text, re.S)
    assert form is not None
    assert re.findall(r'<option value="(1\.\d\.0)"', form.group(0)) == ["1.1.0", "1.0.0"]
    assert '<option value="1.1.0" selected>' in form.group(0)  # the version the page shows
    assert '<option value="blobs">blobs (images; train, val, test)</option>' in form.group(0)
    assert '<option value="test" selected>test</option>' in form.group(0)
    assert_no_inline_code(page)

    token = csrf_of(page.text)
    for version in ("1.0.0", "1.1.0"):
        r = evaluate_form(
            admin, "lesions", token=token, version=version, dataset="blobs", split="test"
        )
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/models/lesions?done=evaluate"
    done = admin.get("/models/lesions?done=evaluate")
    assert 'data-testid="success-message"' in done.text and "Evaluation queued" in done.text

    items = wait_evaluations(admin, "lesions", 2)
    assert [j["status"] for j in items] == ["succeeded", "succeeded"], [j["error"] for j in items]
    assert {j["params"]["model"] for j in items} == {"lesions:1.0.0", "lesions:1.1.0"}
    assert all(j["params"]["split"] == "test" and j["params"]["dataset"] == "blobs" for j in items)
    results = {j["result"]["model"]["version"]: j["result"] for j in items}
    ids = {j["result"]["model"]["version"]: j["id"] for j in items}

    for c in (admin, viewer):
        page = c.get("/models/lesions")
        assert page.status_code == 200
        assert_no_inline_code(page)
        html = page.text
        rows = eval_rows(html)
        # newest first: the API lists the same order
        assert [r["id"] for r in rows] == [j["id"] for j in items]
        for row in rows:
            res = results[row["version"]]
            m, ci = res["metrics"], res["ci95"]
            assert row["status"] == "succeeded" and row["id"] == ids[row["version"]]
            text = text_of(row["cells"])
            assert f"blobs test {res['n']}" in text
            assert cell(m["accuracy"], ci["accuracy"]) in text
            assert cell(m["auc"], ci["auc"]) in text
            assert cell(res["calibration"]["ece"]) in text
            link = f'href="/api/v1/evaluations/{row["id"]}/report.html"'
            assert link in row["cells"] and ">report<" in row["cells"]
            report = c.get(f"/api/v1/evaluations/{row['id']}/report.html")
            assert report.status_code == 200, report.text
            assert report.headers["content-type"].startswith("text/html")
            assert f"lesions:{row['version']}" in report.text

        # side by side: one table (same dataset content, same split), both versions as columns
        tables = re.findall(r'<table[^>]*data-testid="comparison".*?</table>', html, re.S)
        assert len(tables) == 1
        table = tables[0]
        assert f'data-hash="{ds["content_hash"]}"' in table and 'data-split="test"' in table
        assert "eval-best" in table  # two seeds, two different models
        assert re.findall(r'data-testid="comparison-version">([^<]+)<', table) == [
            "1.0.0",
            "1.1.0",
        ]
        metric_rows = dict(
            re.findall(
                r'data-testid="comparison-row" data-metric="([a-z_]+)">(.*?)</tr>', table, re.S
            )
        )
        assert list(metric_rows) == [
            "accuracy",
            "balanced_accuracy",
            "auc",
            "sensitivity",
            "specificity",
            "ece",
        ]
        for key, row_html in metric_rows.items():
            classes = {
                v: c.split()
                for c, v in re.findall(r'<td class="([^"]*)" data-version="([^"]+)">', row_html)
            }
            assert list(classes) == ["1.0.0", "1.1.0"]
            values = {}
            for v in ("1.0.0", "1.1.0"):
                res = results[v]
                value = res["calibration"]["ece"] if key == "ece" else res["metrics"][key]
                values[v] = value
                td = re.search(rf'data-version="{v}">(.*?)</td>', row_html, re.S)
                assert td is not None
                expected = cell(value, None if key == "ece" else res["ci95"][key])
                assert text_of(td.group(1)) == expected, (key, v)
            better = max(values.values()) if key != "ece" else min(values.values())
            for v, value in values.items():
                marked = "eval-best" in classes[v]
                tied = values["1.0.0"] == values["1.1.0"]
                assert marked == (not tied and value == better), (key, v, values)

    # the form's submissions are audited like the API's
    events = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "evaluation.submit"}
    ).json()["items"]
    assert len(events) == 2
    for e in events:
        assert e["actor"] == "admin" and e["details"]["via"] == "web"
        assert e["details"]["dataset_hash"] == ds["content_hash"]
        assert e["object_id"] in ids.values()


def test_bad_form_input_is_422_and_queues_nothing(sign_in, client, admin_headers, no_worker):
    # flat class folders: a dataset with train/val splits only (no test split)
    flat, _ = split_zip({"": 8}, classes=("normal", "pneumonia"))
    upload(client, admin_headers, "flat", flat)
    others, _ = split_zip({"train": 4, "test": 4}, classes=("bright", "dark"))
    upload(client, admin_headers, "others", others)
    admin = sign_in("admin")
    page = admin.get(f"/models/{BUNDLED}")
    token = csrf_of(page.text)
    bad = {
        "unknown dataset": ({"version": "1.0.0", "dataset": "nope"}, "Dataset 'nope' not found"),
        "missing split": (
            {"version": "1.0.0", "dataset": "flat", "split": "test"},
            "no 'test' split",
        ),
        "classes not labels": (
            {"version": "1.0.0", "dataset": "others", "split": "test"},
            "not labels of pneumonia-cxr:1.0.0",
        ),
        "unknown version": ({"version": "9.9.9", "dataset": "flat"}, "9.9.9 not found"),
        "no version": ({"version": "", "dataset": "flat"}, "Choose a version"),
        "no dataset": ({"version": "1.0.0", "dataset": ""}, "Choose a dataset"),
        "bad split": (
            {"version": "1.0.0", "dataset": "flat", "split": "holdout"},
            "choose train, val or test",
        ),
        "long dataset": ({"version": "1.0.0", "dataset": "x" * 65}, "at most 64 characters"),
    }
    for case, (fields, words) in bad.items():
        r = evaluate_form(admin, BUNDLED, token=token, **fields)
        assert r.status_code == 422, (case, r.status_code)
        message = re.search(r'data-testid="error-message">([^<]*)<', r.text)
        assert message is not None, case
        assert words in html_lib.unescape(message.group(1)), (case, message.group(1))
        assert 'data-testid="evaluate-form"' in r.text, case  # the form comes back, filled in
        assert_no_inline_code(r)
    r = evaluate_form(admin, BUNDLED, token=token, version="1.0.0", dataset="flat", split="test")
    assert '<option value="flat" selected>' in r.text
    assert '<option value="test" selected>test</option>' in r.text
    assert total_evaluations(client, admin_headers) == 0

    # a valid one (the val split) is queued: no worker, so it waits, with no report yet
    r = evaluate_form(admin, BUNDLED, token=token, version="1.0.0", dataset="flat", split="val")
    assert r.status_code == 303 and r.headers["location"] == f"/models/{BUNDLED}?done=evaluate"
    page = admin.get(r.headers["location"])
    (row,) = eval_rows(page.text)
    assert row["version"] == "1.0.0" and row["status"] == "queued"
    assert "waiting for the worker" in row["cells"] and "report.html" not in row["cells"]
    assert "flat" in text_of(row["cells"]) and "val" in text_of(row["cells"])
    listing = client.get(EVALS, headers=admin_headers).json()
    assert listing["total"] == 1
    assert listing["items"][0]["params"] == {
        "model": f"{BUNDLED}:1.0.0",
        "dataset": "flat",
        "split": "val",
    }
    # an unknown model is a 404 page
    r = evaluate_form(admin, "nope", token=token, version="1.0.0", dataset="flat")
    assert r.status_code == 404
    assert total_evaluations(client, admin_headers) == 1


def test_failed_evaluation_shows_its_error(sign_in, client, admin_headers, app, no_worker):
    flat, _ = split_zip({"": 8}, classes=("normal", "pneumonia"))
    upload(client, admin_headers, "flat", flat)
    admin = sign_in("admin")
    r = evaluate_form(admin, BUNDLED, version="1.0.0", dataset="flat", split="val")
    assert r.status_code == 303
    (job,) = client.get(EVALS, headers=admin_headers).json()["items"]
    with app.state.clearscan.sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(status="failed", error="stored image unreadable <b>")
        )
        db.commit()
    (row,) = eval_rows(admin.get(f"/models/{BUNDLED}").text)
    assert row["status"] == "failed"
    assert "stored image unreadable &lt;b&gt;" in row["cells"]
    assert "report.html" not in row["cells"]


@pytest.mark.parametrize("role", ["viewer", "clinician"])
def test_non_admins_see_evaluations_but_no_form(sign_in, client, admin_headers, role, no_worker):
    flat, _ = split_zip({"": 8}, classes=("normal", "pneumonia"))
    upload(client, admin_headers, "flat", flat)
    admin = sign_in("admin")
    assert evaluate_form(admin, BUNDLED, version="1.0.0", dataset="flat", split="val").status_code
    user = sign_in(role)
    page = user.get(f"/models/{BUNDLED}")
    assert page.status_code == 200
    assert 'data-testid="evaluations-card"' in page.text
    assert len(eval_rows(page.text)) == 1
    assert 'data-testid="evaluate-form"' not in page.text
    assert "Evaluate a version" not in page.text
    assert_no_inline_code(page)
    token = csrf_of(page.text)  # the sign-out form's token: valid for this session
    r = evaluate_form(user, BUNDLED, token=token, version="1.0.0", dataset="flat", split="val")
    assert r.status_code == 403
    assert "admin role" in r.text
    assert total_evaluations(client, admin_headers) == 1
    denied = client.get(
        "/api/v1/audit", headers=admin_headers, params={"action": "access.denied"}
    ).json()["items"]
    assert any(e["details"].get("path") == f"/models/{BUNDLED}/evaluations" for e in denied)


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_evaluate_form_without_valid_csrf_is_refused(
    sign_in, client, admin_headers, token, no_worker
):
    flat, _ = split_zip({"": 8}, classes=("normal", "pneumonia"))
    upload(client, admin_headers, "flat", flat)
    admin = sign_in("admin")
    data = {"version": "1.0.0", "dataset": "flat", "split": "val"}
    if token is not None:
        data["csrf_token"] = token
    r = admin.post(f"/models/{BUNDLED}/evaluations", data=data, follow_redirects=False)
    assert r.status_code == 403
    assert "security token" in r.text
    assert total_evaluations(client, admin_headers) == 0


def test_evaluate_needs_sign_in(client):
    r = client.post(
        f"/models/{BUNDLED}/evaluations",
        data={"version": "1.0.0", "dataset": "x"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
