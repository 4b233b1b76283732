"""Predictions from feature values through `POST /api/v1/predict` (JSON) with a small hand-made
tabular package (StandardScaler + LogisticRegression on three numeric features, saved with skops):
probabilities and per-feature contributions equal a hand computation with the same estimator,
roles, malformed bodies answered 422 with nothing stored, and the audit trail."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tests.conftest import png_bytes

PREDICT = "/api/v1/predict"
FEATURES = ["age", "bmi", "glucose"]
LABELS = ["low", "high"]


# --- the package ----------------------------------------------------------------------------------


def fit_estimator(seed: int = 0) -> tuple[Pipeline, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300
    x = np.column_stack(
        [rng.normal(50, 12, n), rng.normal(27, 4, n), rng.normal(100, 20, n)]
    ).astype(np.float64)
    z = 0.08 * (x[:, 0] - 50) + 0.3 * (x[:, 1] - 27) + 0.05 * (x[:, 2] - 100)
    y = (z + rng.normal(0, 1.0, n) > 0).astype(int)
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(x, y)
    return est, x


def write_package(
    pkg: Path, est: Pipeline, x: np.ndarray, *, name: str, threshold: float | None = None
) -> dict:
    pkg.mkdir(parents=True)
    sio.dump(est, pkg / "model.skops")
    baselines = [round(float(v), 4) for v in np.median(x, axis=0)]
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "runtime": "sklearn",
        "weights": "model.skops",
        "labels": LABELS,
        "features": [
            {"name": n, "type": "numeric", "baseline": b}
            for n, b in zip(FEATURES, baselines, strict=True)
        ],
        "output": {"name": "probabilities", "kind": "probabilities"},
        "explain": {"method": "none"},
        "files": {"model.skops": hashlib.sha256((pkg / "model.skops").read_bytes()).hexdigest()},
    }
    if threshold is not None:
        manifest["threshold"] = {"label": "high", "value": threshold}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def zip_of(pkg: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(pkg.iterdir()):
            zf.write(p, p.name)
    return buf.getvalue()


def install(client, admin_headers, tmp_path, *, name: str, threshold: float | None = None):
    est, x = fit_estimator()
    manifest = write_package(tmp_path / name, est, x, name=name, threshold=threshold)
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": (f"{name}.zip", zip_of(tmp_path / name), "application/zip")},
    )
    assert r.status_code == 201, r.text
    act = client.post(f"/api/v1/models/{name}/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text
    assert act.json()["status"] == "active"
    return est, x, manifest


# --- the hand computation -------------------------------------------------------------------------


def decide(p: np.ndarray, threshold: float | None) -> int:
    if threshold is None:
        return int(np.argmax(p))
    return 1 if p[1] >= threshold else 0


def logodds(p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(p) - math.log1p(-p)


def hand_contributions(est, row, baselines, threshold):
    p = est.predict_proba(np.array([row], dtype=np.float64))[0]
    top = decide(p, threshold)
    out = []
    for i, b in enumerate(baselines):
        alt = list(row)
        alt[i] = b
        q = est.predict_proba(np.array([alt], dtype=np.float64))[0]
        out.append(logodds(p[top]) - logodds(q[top]))
    return p, top, out


def predict_json(client, headers, body):
    return client.post(PREDICT, headers=headers, json=body)


def case_total(client, headers) -> int:
    r = client.get("/api/v1/cases", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total"]


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_probabilities_and_contributions_match_a_hand_computation(
    client, admin_headers, clinician_headers, tmp_path, threshold
):
    est, _, manifest = install(
        client, admin_headers, tmp_path, name="tab-hand", threshold=threshold
    )
    baselines = [f["baseline"] for f in manifest["features"]]
    rows = [
        [71.0, 33.5, 140.0],  # clearly high
        [30.0, 21.0, 80.0],  # clearly low
        [52.0, 27.5, 101.0],  # near the middle
        [47.0, 26.5, 97.0],  # P(high) ~0.34: decided "high" only with the low threshold
    ]
    decided_against_argmax = 0
    for row in rows:
        r = predict_json(
            client,
            clinician_headers,
            {"model": "tab-hand", "features": dict(zip(FEATURES, row, strict=True))},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        (p,) = body["predictions"]
        want_p, top, want_c = hand_contributions(est, row, baselines, threshold)
        assert p["model"] == {"name": "tab-hand", "version": "1.0.0"}
        assert p["labels"] == LABELS
        np.testing.assert_allclose(p["probabilities"], want_p, atol=1e-6)
        assert p["top_label"] == LABELS[top]
        decided_against_argmax += int(top != int(np.argmax(want_p)))
        assert p["heatmap_url"] is None
        contrib = p["contributions"]
        assert [c["feature"] for c in contrib] == FEATURES
        assert [c["value"] for c in contrib] == row
        for c, w in zip(contrib, want_c, strict=True):
            assert c["contribution"] == pytest.approx(w, abs=1e-4), (c, w)
        # the case holds the submitted values
        case = client.get(f"/api/v1/cases/{body['case_id']}", headers=clinician_headers)
        assert case.status_code == 200, case.text
        (image,) = case.json()["images"]
        assert image["format"] == "features"
    if threshold is not None:
        assert decided_against_argmax >= 1  # the threshold, not argmax, decided at least once


def test_a_row_at_the_baseline_contributes_nothing(
    client, admin_headers, clinician_headers, tmp_path
):
    _, _, manifest = install(client, admin_headers, tmp_path, name="tab-base")
    base = {f["name"]: f["baseline"] for f in manifest["features"]}
    r = predict_json(client, clinician_headers, {"model": "tab-base", "features": base})
    assert r.status_code == 200, r.text
    contrib = r.json()["predictions"][0]["contributions"]
    assert [c["contribution"] for c in contrib] == [0.0, 0.0, 0.0]


def test_roles(client, admin_headers, clinician_headers, viewer_headers, tmp_path):
    install(client, admin_headers, tmp_path, name="tab-roles")
    body = {"model": "tab-roles", "features": {"age": 60, "bmi": 30, "glucose": 120}}
    assert predict_json(client, viewer_headers, body).status_code == 403
    assert client.post(PREDICT, json=body).status_code == 401
    assert predict_json(client, clinician_headers, body).status_code == 200
    assert predict_json(client, admin_headers, body).status_code == 200


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b'{"model": "tab-bad", "features": {}}', "features"),
        (b'{"model": "tab-bad", "features": [1, 2]}', "features"),
        (b'{"model": "tab-bad"}', "features"),
        (b'{"model": 7, "features": {"age": 1}}', "model"),
        (b'{"model": "tab-bad", "features": {"age": 1, "height": 2}}', "height"),
        (b'{"model": "tab-bad", "features": {"age": "old"}}', "age"),
        (b'{"model": "tab-bad", "features": {"age": true}}', "age"),
        (b'{"model": "tab-bad", "features": {"age": [1]}}', "age"),
        (b'{"model": "tab-bad", "features": {"age": 1e999}}', "age"),
        (b'{"model": "tab-bad", "features": {"age": 1}, "note": 5}', "note"),
    ],
)
def test_malformed_bodies_are_422_and_store_nothing(
    client, admin_headers, clinician_headers, tmp_path, raw, needle
):
    install(client, admin_headers, tmp_path, name="tab-bad")
    before = case_total(client, admin_headers)
    preds_before = client.get(
        "/api/v1/audit?action=prediction.create", headers=admin_headers
    ).json()["total"]
    r = client.post(
        PREDICT,
        headers={**clinician_headers, "Content-Type": "application/json"},
        content=raw,
    )
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"], r.json()
    assert case_total(client, admin_headers) == before
    after = client.get("/api/v1/audit?action=prediction.create", headers=admin_headers).json()
    assert after["total"] == preds_before


def test_numeric_strings_and_partial_rows(client, admin_headers, clinician_headers, tmp_path):
    est = install(client, admin_headers, tmp_path, name="tab-str")[0]
    r = predict_json(
        client,
        clinician_headers,
        {"model": "tab-str", "features": {"age": "61.5", "bmi": 29, "glucose": 130}},
    )
    assert r.status_code == 200, r.text
    want = est.predict_proba(np.array([[61.5, 29.0, 130.0]]))[0]
    np.testing.assert_allclose(r.json()["predictions"][0]["probabilities"], want, atol=1e-6)


def test_unknown_model_and_image_model(client, admin_headers, clinician_headers, tmp_path):
    install(client, admin_headers, tmp_path, name="tab-kind")
    before = case_total(client, admin_headers)
    r = predict_json(client, clinician_headers, {"model": "no-such", "features": {"a": 1}})
    assert r.status_code == 404, r.text
    # JSON to the bundled image model
    r = predict_json(client, clinician_headers, {"model": "pneumonia-cxr", "features": {"age": 1}})
    assert r.status_code == 422, r.text
    assert "images" in r.json()["detail"]
    # an image to the tabular model
    r = client.post(
        PREDICT,
        headers=clinician_headers,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        data={"model": "tab-kind"},
    )
    assert r.status_code == 422, r.text
    assert "feature values" in r.json()["detail"]
    assert case_total(client, admin_headers) == before


def test_audit_trail(client, admin_headers, clinician_headers, tmp_path):
    install(client, admin_headers, tmp_path, name="tab-audit")
    r = predict_json(
        client,
        clinician_headers,
        {
            "model": "tab-audit",
            "features": {"age": 70, "bmi": 35, "glucose": 150},
            "patient_ref": "P-1",
            "note": "check",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    (p,) = body["predictions"]
    events = client.get("/api/v1/audit?action=prediction.create", headers=admin_headers).json()
    mine = [e for e in events["items"] if e["object_id"] == p["id"]]
    assert len(mine) == 1, events
    assert mine[0]["details"]["model"] == "tab-audit:1.0.0"
    assert mine[0]["details"]["top_label"] == p["top_label"]
    assert mine[0]["actor"].startswith("clinician")
    for action in ("case.create", "features.upload"):
        ev = client.get(f"/api/v1/audit?action={action}", headers=admin_headers).json()
        assert ev["total"] >= 1, action
    case = client.get(f"/api/v1/cases/{body['case_id']}", headers=clinician_headers).json()
    assert case["patient_ref"] == "P-1"
    # a rejected request is audited as a rejection
    r = predict_json(client, clinician_headers, {"model": "tab-audit", "features": {"x": 1}})
    assert r.status_code == 422
    rejected = client.get("/api/v1/audit?action=predict", headers=admin_headers).json()
    assert any(e["outcome"] == "rejected" for e in rejected["items"])


def test_null_value_for_a_model_that_cannot_impute_is_a_client_error(
    client, admin_headers, clinician_headers, tmp_path
):
    install(client, admin_headers, tmp_path, name="tab-null")
    before = case_total(client, admin_headers)
    r = predict_json(
        client,
        clinician_headers,
        {"model": "tab-null", "features": {"age": None, "bmi": 30, "glucose": 100}},
    )
    assert case_total(client, admin_headers) == before
    assert r.status_code == 422, r.text
