"""Tabular training runs through the API on the Wisconsin breast cancer table (the tabular example
dataset): CSV import -> run with recipe auto (cross-validated choice of three recipes) -> an
inactive skops model version -> activated -> `POST /api/v1/predict` with feature values (JSON),
per-feature contributions, refusals; runs that cannot cross-validate fail naming the folds; a
named recipe is used as given; a seed gives the same model twice."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.conftest import png_bytes
from tests.training.test_training_runs import submit, train, upload, wait_run

ROOT = Path(__file__).resolve().parents[3]
RUNS = "/api/v1/training-runs"
PREDICT = "/api/v1/predict"
RECIPES = {"logistic-regression", "random-forest", "gradient-boosting"}


def export_module():
    spec = importlib.util.spec_from_file_location(
        "export_breast_cancer", ROOT / "scripts" / "export_breast_cancer.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split_column(y: np.ndarray, seed: int = 0) -> list[str]:
    """Stratified 70 / 15 / 15 train / val / test."""
    rng = np.random.default_rng(seed)
    out = [""] * len(y)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = n_test = round(len(idx) * 0.15)
        for k, i in enumerate(idx):
            out[i] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return out


def breast_cancer_csv(tmp_path: Path, *, splits: bool = True) -> tuple[bytes, dict]:
    """The exported CSV (plus a `split` column, so the test knows which rows are val) and the
    rows as dicts of feature -> value with their diagnosis and split."""
    path = export_module().export(tmp_path / "breast_cancer.csv")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    data = load_breast_cancer()
    assert header == [*data.feature_names, "diagnosis"]
    assert len(body) == 569
    assert {r[-1] for r in body} == {"malignant", "benign"}
    split = split_column(data.target)
    records = [
        {
            "features": {h: float(v) for h, v in zip(header[:-1], r[:-1], strict=True)},
            "label": r[-1],
            "split": s,
        }
        for r, s in zip(body, split, strict=True)
    ]
    if not splits:
        return path.read_bytes(), {"header": header, "records": records}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*header, "split"])
    for r, s in zip(body, split, strict=True):
        w.writerow([*r, s])
    return buf.getvalue().encode(), {"header": header, "records": records}


def import_table(client, headers, name: str, data: bytes, target: str) -> dict:
    return upload(client, headers, name, data, filename=f"{name}.csv", target=target)


def predict_features(client, headers, model: str, features: dict):
    return client.post(PREDICT, headers=headers, json={"model": model, "features": features})


# --- tests ----------------------------------------------------------------------------------------


def test_breast_cancer_auto_train_activate_and_predict(
    client, admin_headers, clinician_headers, viewer_headers, tmp_path
):
    data, table = breast_cancer_csv(tmp_path)
    ds = import_table(client, admin_headers, "breast-cancer", data, "diagnosis")
    assert ds["kind"] == "table" and ds["n_items"] == 569
    assert sorted(ds["classes"]) == ["benign", "malignant"]
    n_val = sum(ds["counts"]["val"].values())
    assert n_val == sum(r["split"] == "val" for r in table["records"])

    run = train(client, admin_headers, dataset="breast-cancer")  # recipe auto by default
    assert run["params"] == {"dataset": "breast-cancer", "seed": 0}
    res = run["result"]
    assert res["model"] == "breast-cancer:1.0.0"
    assert res["dataset"]["name"] == "breast-cancer"
    assert res["dataset"]["hash"] == ds["content_hash"]
    cv = res["cross_validation"]
    assert set(cv) == RECIPES
    assert res["recipe"] in RECIPES
    assert cv[res["recipe"]]["auc_mean"] == max(v["auc_mean"] for v in cv.values())
    assert cv[res["recipe"]]["auc_mean"] >= 0.99, cv  # the target
    assert all(0 <= v["auc_std"] < 0.1 for v in cv.values())
    val = res["val_metrics"]
    assert {"n", "accuracy", "auc", "balanced_accuracy", "sensitivity", "specificity"} <= set(val)
    assert val["n"] == n_val
    assert val["auc"] >= 0.97 and val["accuracy"] >= 0.9
    assert 0 < res["threshold"] < 1
    imp = res["feature_importance"]
    assert isinstance(imp, list) and 1 <= len(imp) <= 20
    assert all(set(d) == {"feature", "importance"} for d in imp)
    assert {d["feature"] for d in imp} <= set(table["header"][:-1])
    assert [d["importance"] for d in imp] == sorted((d["importance"] for d in imp), reverse=True)

    # a new inactive version; it does not serve until an admin activates it
    versions = client.get("/api/v1/models/breast-cancer/versions", headers=viewer_headers).json()
    assert [(v["version"], v["status"], v["runtime"]) for v in versions["items"]] == [
        ("1.0.0", "inactive", "sklearn")
    ]
    val_rows = [r for r in table["records"] if r["split"] == "val"]
    r = predict_features(client, clinician_headers, "breast-cancer", val_rows[0]["features"])
    assert r.status_code == 409, r.text
    act = client.post("/api/v1/models/breast-cancer/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text
    assert act.json()["status"] == "active"

    detail = client.get("/api/v1/models/breast-cancer", headers=viewer_headers).json()
    features = detail["input"]["features"]
    assert [f["name"] for f in features] == table["header"][:-1]
    assert all(f["type"] == "numeric" and isinstance(f["baseline"], float) for f in features)
    baseline = {f["name"]: f["baseline"] for f in features}
    assert detail["metrics"]["validation"] == val
    assert detail["metrics"]["cross_validation"] == cv
    assert detail["training"]["recipe"] == res["recipe"]

    # real val rows: the served decision is the row's diagnosis for at least 9 of 10
    rng = np.random.default_rng(1)
    sample = [val_rows[i] for i in rng.choice(len(val_rows), 10, replace=False)]
    right, replies = 0, []
    for row in sample:
        r = predict_features(client, clinician_headers, "breast-cancer", row["features"])
        assert r.status_code == 200, r.text
        body = r.json()
        (p,) = body["predictions"]
        assert p["model"] == {"name": "breast-cancer", "version": "1.0.0"}
        assert p["heatmap_url"] is None
        assert abs(sum(p["probabilities"]) - 1) < 1e-5
        contrib = p["contributions"]
        assert [c["feature"] for c in contrib] == table["header"][:-1]
        assert all(isinstance(c["contribution"], float) for c in contrib)
        right += p["top_label"] == row["label"]
        replies.append((row, body))
    assert right >= 9, right

    # the case is stored with the submitted values
    case_id = replies[0][1]["case_id"]
    case = client.get(f"/api/v1/cases/{case_id}", headers=viewer_headers)
    assert case.status_code == 200, case.text
    assert case.json()["images"][0]["format"] == "features"

    # setting the feature that contributes most to its baseline lowers the decided class's
    # probability (the least confident sampled row: its probability is not saturated)
    row, body = min(replies, key=lambda rb: max(rb[1]["predictions"][0]["probabilities"]))
    (p,) = body["predictions"]
    top = p["labels"].index(p["top_label"])
    best = max(p["contributions"], key=lambda c: c["contribution"])
    assert best["contribution"] > 0, p["contributions"]
    changed = {**row["features"], best["feature"]: baseline[best["feature"]]}
    r = predict_features(client, clinician_headers, "breast-cancer", changed)
    assert r.status_code == 200, r.text
    q = r.json()["predictions"][0]
    assert q["probabilities"][top] < p["probabilities"][top], (best, p, q)
    p_old, p_new = p["probabilities"][top], q["probabilities"][top]
    if 1e-4 < p_old < 1 - 1e-4 and 1e-4 < p_new < 1 - 1e-4:

        def lo(v: float) -> float:
            return math.log(v) - math.log1p(-v)

        assert lo(p_old) - lo(p_new) == pytest.approx(best["contribution"], abs=0.02)

    # refusals
    feats = sample[0]["features"]
    r = predict_features(client, clinician_headers, "breast-cancer", {**feats, "age": 50})
    assert r.status_code == 422 and "age" in r.json()["detail"], r.text
    r = predict_features(
        client, clinician_headers, "breast-cancer", {**feats, "mean radius": "large"}
    )
    assert r.status_code == 422 and "mean radius" in r.json()["detail"], r.text
    # null and missing values are imputed by the pipeline
    nulls = {**feats, "mean radius": None, "worst area": None}
    del nulls["mean texture"]
    r = predict_features(client, clinician_headers, "breast-cancer", nulls)
    assert r.status_code == 200, r.text
    got = {c["feature"]: c["value"] for c in r.json()["predictions"][0]["contributions"]}
    assert got["mean radius"] is None and got["mean texture"] is None
    r = predict_features(client, clinician_headers, "breast-cancer", {"mean radius": None})
    assert r.status_code == 200, r.text
    # an image to the tabular model, feature values to an image model
    r = client.post(
        PREDICT,
        headers=clinician_headers,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        data={"model": "breast-cancer"},
    )
    assert r.status_code == 422 and "feature values" in r.json()["detail"], r.text
    r = predict_features(client, clinician_headers, "pneumonia-cxr", feats)
    assert r.status_code == 422 and "images" in r.json()["detail"], r.text
    # the viewer may not predict
    r = predict_features(client, viewer_headers, "breast-cancer", feats)
    assert r.status_code == 403


def test_a_class_too_small_for_the_folds_fails_the_run(client, admin_headers):
    rng = np.random.default_rng(0)
    lines = ["x,z,label"]
    for _i in range(40):
        lines.append(f"{rng.normal():.4f},{rng.normal():.4f},common")
    for _i in range(3):
        lines.append(f"{rng.normal() + 3:.4f},{rng.normal():.4f},rare")
    data = ("\n".join(lines) + "\n").encode()
    ds = import_table(client, admin_headers, "tiny", data, "label")
    assert ds["counts"]["train"]["rare"] + ds["counts"]["val"]["rare"] == 3
    r = submit(client, admin_headers, dataset="tiny")
    assert r.status_code == 202, r.text
    run = wait_run(client, admin_headers, r.json()["id"])
    assert run["status"] == "failed", run
    assert "fold" in run["error"], run["error"]
    assert f"the smallest class has {ds['counts']['train']['rare']}" in run["error"]
    # nothing registered
    assert client.get("/api/v1/models/tiny", headers=admin_headers).status_code == 404


def test_named_recipe_and_same_seed_same_model(client, admin_headers, tmp_path):
    data, _ = breast_cancer_csv(tmp_path, splits=False)  # the export as it is: a made val split
    ds = import_table(client, admin_headers, "bc", data, "diagnosis")
    assert ds["info"]["splits"]["validation"].startswith("made")
    assert "test" not in ds["counts"]
    a = train(client, admin_headers, dataset="bc", recipe="random-forest", seed=3, model_name="a")
    b = train(client, admin_headers, dataset="bc", recipe="random-forest", seed=3, model_name="b")
    for run in (a, b):
        assert run["params"]["recipe"] == "random-forest"
        assert run["result"]["recipe"] == "random-forest"
        assert set(run["result"]["cross_validation"]) == {"random-forest"}
    assert a["result"]["val_metrics"] == b["result"]["val_metrics"]
    assert a["result"]["cross_validation"] == b["result"]["cross_validation"]
    assert a["result"]["threshold"] == b["result"]["threshold"]
    assert a["result"]["feature_importance"] == b["result"]["feature_importance"]
    detail = client.get("/api/v1/models/a", headers=admin_headers).json()
    assert detail["training"]["recipe"] == "random-forest" and detail["training"]["seed"] == 3
    # an unknown tabular recipe (or an image recipe) is refused before anything is queued
    for recipe in ("svm", "cnn-small"):
        r = submit(client, admin_headers, dataset="bc", recipe=recipe)
        assert r.status_code == 422, r.text
        assert "random-forest" in r.json()["detail"]
