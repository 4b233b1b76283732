"""Helpers for the deploy tests: the metric names a PromQL expression reads, and the series a
running app really exports at /metrics."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import png_bytes

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER_OR_DURATION = re.compile(r"\d[\w.]*")


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects: identifiers standing as series selectors (alone or
    before `{` or `[`), not functions (followed by `(`), keywords, label names or values."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)  # label matchers (names and values)
    s = re.sub(r"\[[^\]]*\]", "[]", s)  # ranges and subqueries' durations (and Grafana's $vars)
    s = _GROUPING.sub(" ", s)  # by (le, route): label names
    s = _NUMBER_OR_DURATION.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end() :].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("("):
            continue
        if m.start() > 0 and s[m.start() - 1] == "$":
            continue  # a Grafana variable outside a selector
        names.add(word)
    return names


def exported_series(client: TestClient, admin_headers: dict[str, str], clinician: dict[str, str]):
    """The sample names (with _bucket, _sum, _count, _total) /metrics exports once the app
    made a prediction, ran a job and verified the audit chain."""
    from clearscan.jobs import service as jobs
    from clearscan.training.evaluation import EVAL_KIND

    r = client.post(
        "/api/v1/predict",
        headers=clinician,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    assert r.status_code == 200, r.text
    refused = client.post("/api/v1/predict", headers=clinician, files=[("note", (None, "x"))])
    assert refused.status_code == 422, refused.text
    state = client.app.state.clearscan  # type: ignore[attr-defined]
    with state.sessions() as db:
        job = jobs.submit(db=db, kind=EVAL_KIND, params={}, actor="admin")  # fails: no params
        db.commit()
        job_id = job.id
    state.jobs.notify()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with state.sessions() as db:
            if jobs.get(db=db, job_id=job_id).finished_at is not None:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the job did not finish")
    assert client.get("/api/v1/audit/verify", headers=admin_headers).json()["ok"]
    text = client.get("/metrics").text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def promtool() -> str:
    """promtool's path; skipped when absent unless CI requires it (CLEARSCAN_E2E_REQUIRED)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CLEARSCAN_E2E_REQUIRED"):
            pytest.fail(
                "promtool is required (CLEARSCAN_E2E_REQUIRED is set): apt install prometheus"
            )
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path
