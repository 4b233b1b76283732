"""Evaluations through the API: a model version run on one split of a dataset through the serving
path (same decisions as `POST /api/v1/predict`), the result (metrics with intervals, confusion,
ROC, calibration) and its HTML report, two versions compared on the same split, 422 refusals for
what does not fit, roles; a tabular model evaluated on its validation split gives the metrics its
training run reported and that its stored estimator gives."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
import skops.io as sio
from fastapi.testclient import TestClient
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
)

from clearscan.app import create_app
from clearscan.config import Settings
from clearscan.jobs.models import FINISHED
from tests.conftest import ADMIN_PASSWORD, login, pg_available, pg_database, png_bytes
from tests.training.test_training_runs import SIZE, train, upload
from tests.training.trainers.test_tabular import breast_cancer_csv

EVALS = "/api/v1/evaluations"
CLASSES = ("bright", "dark")


# --- helpers --------------------------------------------------------------------------------------


def faint_blob(rng: np.random.Generator, bright: bool, amp: float = 0.1) -> np.ndarray:
    """Noisy grey with a faint bright (or dark) blob: hard enough that two seeds differ."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(9, 19, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 5) ** 2))
    img = 0.5 + (amp if bright else -amp) * blob + rng.normal(0, 0.1, (SIZE, SIZE))
    return np.clip(img, 0, 1)


def split_zip(counts: dict[str, int], classes=CLASSES, seed: int = 0):
    """A zip of <split>/<class>/<image>.png and the images per split as (array, class)."""
    rng = np.random.default_rng(seed)
    images: dict[str, list[tuple[np.ndarray, str]]] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in counts.items():
            for cls in classes:
                for i in range(n):
                    img = faint_blob(rng, cls != "dark")
                    prefix = f"{split}/" if split else ""
                    zf.writestr(f"set/{prefix}{cls}/{i:03d}.png", png_bytes(img))
                    images.setdefault(split, []).append((img, cls))
    return buf.getvalue(), images


def evaluate(client, headers, **body):
    return client.post(EVALS, headers=headers, json=body)


def wait_eval(client, headers, eval_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"{EVALS}/{eval_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in FINISHED:
            return job
        assert time.monotonic() < deadline, f"evaluation still {job['status']}: {job['progress']}"
        time.sleep(0.3)


def run_eval(client, headers, **body) -> dict:
    r = evaluate(client, headers, **body)
    assert r.status_code == 202, r.text
    job = wait_eval(client, headers, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def check_report(r: dict, labels: list[str]) -> None:
    n = r["n"]
    assert set(r["metrics"]) == set(r["ci95"])
    for k, v in r["metrics"].items():
        lo, hi = r["ci95"][k]
        assert 0.0 <= lo <= hi <= 1.0, k
        assert lo - 1e-9 <= v <= hi + 1e-9, (k, lo, v, hi)
    assert r["confusion"]["labels"] == labels
    assert sum(map(sum, r["confusion"]["matrix"])) == n
    assert [c["label"] for c in r["per_class"]] == labels
    assert sum(c["support"] for c in r["per_class"]) == n
    assert sum(b["n"] for b in r["calibration"]["bins"]) == n
    assert 0.0 <= r["calibration"]["ece"] <= 1.0


# --- image models ---------------------------------------------------------------------------------


def test_evaluate_compare_and_report(
    client, admin_headers, clinician_headers, viewer_headers, tmp_path
):
    data, images = split_zip({"train": 24, "val": 10, "test": 12})
    ds = upload(client, admin_headers, "blobs", data)
    assert ds["counts"]["test"] == {"bright": 12, "dark": 12}
    train(client, admin_headers, dataset="blobs", epochs=2, seed=0)
    act = client.post("/api/v1/models/blobs/versions/1.0.0/activate", headers=admin_headers)
    assert act.status_code == 200, act.text

    # only an admin evaluates
    for headers in (viewer_headers, clinician_headers):
        assert evaluate(client, headers, model="blobs", dataset="blobs").status_code == 403
    assert client.post(EVALS, json={"model": "blobs", "dataset": "blobs"}).status_code == 401

    r = evaluate(client, admin_headers, model="blobs", dataset="blobs", split="test")
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["params"] == {"model": "blobs:1.0.0", "dataset": "blobs", "split": "test"}
    job = wait_eval(client, viewer_headers, queued["id"])  # any user may watch
    assert job["status"] == "succeeded", job["error"]
    a = job["result"]
    assert a["model"] == {"name": "blobs", "version": "1.0.0"}
    assert a["dataset"] == {"name": "blobs", "hash": ds["content_hash"]}
    assert a["split"] == "test" and a["n"] == 24
    assert a["positive_label"] == "dark"
    assert set(a["metrics"]) == {
        "accuracy",
        "balanced_accuracy",
        "auc",
        "sensitivity",
        "specificity",
    }
    check_report(a, list(CLASSES))
    assert list(a["roc"]) == ["dark"]

    # the same decisions as serving: predict every test image through the API
    y, pred, p_dark = [], [], []
    for img, cls in images["test"]:
        r = client.post(
            "/api/v1/predict",
            headers=clinician_headers,
            files=[("file", ("x.png", png_bytes(img), "image/png"))],
            data={"model": "blobs", "explain": "false"},
        )
        assert r.status_code == 200, r.text
        (p,) = r.json()["predictions"]
        assert p["model"] == {"name": "blobs", "version": "1.0.0"}
        y.append(CLASSES.index(cls))
        pred.append(CLASSES.index(p["top_label"]))
        p_dark.append(p["probabilities"][1])
    y, pred = np.array(y), np.array(pred)
    m = a["metrics"]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-5)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-5)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    assert a["confusion"]["matrix"] == cm.tolist()
    assert m["sensitivity"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-5)
    assert m["specificity"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-5)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p_dark), abs=0.01)
    assert m["accuracy"] >= 0.7  # the classes differ visibly

    # the HTML report
    r = client.get(f"{EVALS}/{queued['id']}/report.html", headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "<svg" in r.text and "blobs:1.0.0" in r.text and "blobs" in r.text
    assert f"{m['accuracy']:.4f}" in r.text
    assert client.get(f"{EVALS}/{'0' * 32}/report.html", headers=viewer_headers).status_code == 404
    assert client.get(f"{EVALS}/{'0' * 32}", headers=viewer_headers).status_code == 404

    # a second version (another seed), evaluated by NAME:VERSION while inactive
    second = train(client, admin_headers, dataset="blobs", epochs=2, seed=5)
    assert second["result"]["model"] == "blobs:1.1.0"
    job_b = run_eval(client, admin_headers, model="blobs:1.1.0", dataset="blobs")
    b = job_b["result"]
    assert b["model"] == {"name": "blobs", "version": "1.1.0"} and b["split"] == "test"
    check_report(b, list(CLASSES))

    r = client.get(
        f"{EVALS}/compare", params={"a": job["id"], "b": job_b["id"]}, headers=viewer_headers
    )
    assert r.status_code == 200, r.text
    cmp = r.json()
    assert cmp["n"] == 24 and cmp["split"] == "test"
    assert cmp["dataset"] == {"name": "blobs", "hash": ds["content_hash"]}
    assert cmp["a"]["model"] == a["model"] and cmp["b"]["model"] == b["model"]
    assert cmp["a"]["metrics"] == a["metrics"] and cmp["b"]["ci95"] == b["ci95"]
    assert set(cmp["difference"]) == set(a["metrics"])
    for k, d in cmp["difference"].items():
        assert d == pytest.approx(b["metrics"][k] - a["metrics"][k], abs=1e-5), k
    assert any(d != 0 for d in cmp["difference"].values()), cmp  # the seeds give other models
    assert cmp["ece"] == {"a": a["calibration"]["ece"], "b": b["calibration"]["ece"]}
    swapped = client.get(
        f"{EVALS}/compare", params={"a": job_b["id"], "b": job["id"]}, headers=viewer_headers
    ).json()
    for k, d in cmp["difference"].items():
        assert swapped["difference"][k] == pytest.approx(-d, abs=1e-5), k

    # another split is not comparable
    job_val = run_eval(client, admin_headers, model="blobs:1.0.0", dataset="blobs", split="val")
    assert job_val["result"]["n"] == 20 and job_val["result"]["split"] == "val"
    r = client.get(
        f"{EVALS}/compare", params={"a": job["id"], "b": job_val["id"]}, headers=viewer_headers
    )
    assert r.status_code == 422, r.text
    assert "same dataset split" in r.json()["detail"]
    r = client.get(
        f"{EVALS}/compare", params={"a": job["id"], "b": "0" * 32}, headers=viewer_headers
    )
    assert r.status_code == 404, r.text

    # listing, by model name or NAME:VERSION
    listing = client.get(EVALS, headers=viewer_headers).json()
    assert listing["total"] == 3
    assert {j["id"] for j in listing["items"]} == {job["id"], job_b["id"], job_val["id"]}
    by_name = client.get(EVALS, params={"model": "blobs"}, headers=viewer_headers).json()
    assert by_name["total"] == 3
    by_ref = client.get(EVALS, params={"model": "blobs:1.1.0"}, headers=viewer_headers).json()
    assert [j["id"] for j in by_ref["items"]] == [job_b["id"]]
    assert client.get(EVALS, params={"model": "other"}, headers=viewer_headers).json()["total"] == 0
    # evaluations are not training runs
    runs = client.get("/api/v1/training-runs", headers=viewer_headers).json()
    assert runs["total"] == 2

    events = client.get("/api/v1/audit?action=evaluation.submit", headers=admin_headers).json()
    assert events["total"] == 3
    assert {e["details"]["dataset_hash"] for e in events["items"]} == {ds["content_hash"]}


def test_mismatches_are_422_and_queue_nothing(client, admin_headers, tmp_path):
    data, _ = split_zip({"train": 16, "val": 6, "test": 6})
    upload(client, admin_headers, "blobs", data)
    train(client, admin_headers, dataset="blobs", epochs=1)
    # classes the model does not know, and no test split (flat <class>/ folders)
    other, _ = split_zip({"": 8}, classes=("bright", "grey"))
    upload(client, admin_headers, "greys", other)
    table, _ = breast_cancer_csv(tmp_path)
    upload(client, admin_headers, "bc", table, filename="bc.csv", target="diagnosis")
    train(client, admin_headers, dataset="bc", recipe="logistic-regression")

    bad = {
        "unknown model": ({"model": "nope", "dataset": "blobs"}, ["nope", "not found"]),
        "unknown version": ({"model": "blobs:9.9.9", "dataset": "blobs"}, ["9.9.9"]),
        "no active version": ({"model": "blobs", "dataset": "blobs"}, ["no active version"]),
        "unknown dataset": ({"model": "blobs:1.0.0", "dataset": "nope"}, ["nope"]),
        "missing split": ({"model": "blobs:1.0.0", "dataset": "greys"}, ["no 'test' split"]),
        "classes not labels": (
            {"model": "blobs:1.0.0", "dataset": "greys", "split": "val"},
            ["grey", "not labels"],
        ),
        "tabular model, image dataset": (
            {"model": "bc:1.0.0", "dataset": "blobs"},
            ["feature values", "images"],
        ),
        "image model, table dataset": ({"model": "blobs:1.0.0", "dataset": "bc"}, ["images"]),
    }
    for case, (body, words) in bad.items():
        r = evaluate(client, admin_headers, **body)
        assert r.status_code == 422, (case, r.text)
        detail = r.json()["detail"]
        for w in words:
            assert w in detail, (case, w, detail)
    for body in (
        {"model": "blobs:1.0.0", "dataset": "blobs", "split": "holdout"},
        {"model": "blobs:1.0.0", "dataset": "blobs", "extra": 1},
        {"dataset": "blobs"},
    ):
        assert evaluate(client, admin_headers, **body).status_code == 422, body
    assert client.get(EVALS, headers=admin_headers).json()["total"] == 0
    events = client.get("/api/v1/audit?action=evaluation.submit", headers=admin_headers).json()
    assert events["total"] == 0


# --- tabular models -------------------------------------------------------------------------------


def test_tabular_evaluation_matches_training_and_the_stored_estimator(
    client, admin_headers, settings, tmp_path
):
    data, table = breast_cancer_csv(tmp_path)
    ds = upload(client, admin_headers, "bc", data, filename="bc.csv", target="diagnosis")
    run = train(client, admin_headers, dataset="bc", recipe="logistic-regression")
    val_metrics = run["result"]["val_metrics"]
    job = run_eval(client, admin_headers, model="bc:1.0.0", dataset="bc", split="val")
    r = job["result"]
    assert r["n"] == val_metrics["n"] == sum(ds["counts"]["val"].values())
    assert r["dataset"] == {"name": "bc", "hash": ds["content_hash"]}
    check_report(r, ds["classes"])
    for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"):
        assert r["metrics"][k] == pytest.approx(val_metrics[k], abs=1e-5), k

    # recomputed with the estimator skops loads from the stored package
    pkg = settings.data_dir / "models" / "bc" / "1.0.0"
    est = sio.load(pkg / "model.skops", trusted=sio.get_untrusted_types(file=pkg / "model.skops"))
    manifest = json.loads((pkg / "manifest.json").read_text())
    names = [f["name"] for f in manifest["features"]]
    positive, t = manifest["threshold"]["label"], manifest["threshold"]["value"]
    assert positive == ds["classes"][1]
    rows = [x for x in table["records"] if x["split"] == "val"]
    x = np.array([[row["features"][n] for n in names] for row in rows], dtype=object)
    y = np.array([ds["classes"].index(row["label"]) for row in rows])
    prob = est.predict_proba(x)
    pos = ds["classes"].index(positive)
    pred = np.where(prob[:, pos] >= t, pos, 1 - pos)
    assert r["metrics"]["auc"] == pytest.approx(roc_auc_score(y == pos, prob[:, pos]), abs=1e-5)
    assert r["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-5)
    assert r["confusion"]["matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert r["positive_label"] == positive

    rep = client.get(f"{EVALS}/{job['id']}/report.html", headers=admin_headers)
    assert rep.status_code == 200 and "<svg" in rep.text and "bc:1.0.0" in rep.text


# --- a split that lacks a class, on PostgreSQL ----------------------------------------------------


@pytest.fixture
def pg_settings(settings: Settings) -> Iterator[Settings]:
    if not pg_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    with pg_database(settings) as pg:
        yield pg


def test_evaluation_of_a_split_without_positives_succeeds_on_postgresql(pg_settings, tmp_path):
    data, _ = breast_cancer_csv(tmp_path)
    rows = list(csv.reader(io.StringIO(data.decode())))
    # move the malignant test rows to train: the test split holds benign rows only
    body = [[*r[:-1], "train"] if r[-1] == "test" and r[-2] == "malignant" else r for r in rows[1:]]
    buf = io.StringIO()
    csv.writer(buf).writerows([rows[0], *body])
    with TestClient(create_app(pg_settings), raise_server_exceptions=False) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        ds = upload(c, admin, "bc", buf.getvalue().encode(), filename="bc.csv", target="diagnosis")
        assert ds["counts"]["test"]["malignant"] == 0 and ds["counts"]["test"]["benign"] > 0
        train(c, admin, dataset="bc", recipe="logistic-regression")
        r = evaluate(c, admin, model="bc:1.0.0", dataset="bc", split="test")
        assert r.status_code == 202, r.text
        job = wait_eval(c, admin, r.json()["id"], timeout=10)
        assert job["status"] == "succeeded", job
        assert job["result"]["n"] == ds["counts"]["test"]["benign"]


def test_evaluation_list_filters_and_pages_in_sql(client, admin_headers):
    """`model=NAME` matches every version of exactly that name (case-sensitive; `_` and `%` are
    not wildcards), `model=NAME:VERSION` one version; total counts all matches, not one page."""
    from clearscan.jobs import service as jobs
    from clearscan.training.service import EVAL_KIND, list_runs

    def list_evaluations(db, model=None):
        return list_runs(db=db, kind=EVAL_KIND, model=model)

    state = client.app.state.clearscan
    refs = ["m:1.0.0", "m:2.0.0", "m:1.0.0", "M:1.0.0", "mx:1.0.0", "m_:1.0.0", "m%:1.0.0"]
    with state.sessions() as db:
        for ref in refs:
            jobs.submit(db=db, kind=EVAL_KIND, params={"model": ref, "dataset": "d"}, actor="t")
        jobs.submit(db=db, kind="train", params={"model": "m:1.0.0"}, actor="t")  # not an eval
        db.commit()
        rows, total = list_evaluations(db, model="m")
        assert total == 3 and {j.params["model"] for j in rows} == {"m:1.0.0", "m:2.0.0"}
        assert list_evaluations(db, model="m:1.0.0")[1] == 2
        assert list_evaluations(db, model="M")[1] == 1
        assert list_evaluations(db, model="m_")[1] == 1 and list_evaluations(db, model="m%")[1] == 1
        assert list_evaluations(db)[1] == len(refs)

    def get(**params):
        r = client.get(EVALS, headers=admin_headers, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    everything = get(model="m")
    assert everything["total"] == 3 and len(everything["items"]) == 3
    pages = [get(model="m", limit=2, offset=0), get(model="m", limit=2, offset=2)]
    assert [p["total"] for p in pages] == [3, 3] and [len(p["items"]) for p in pages] == [2, 1]
    ids = [i["id"] for p in pages for i in p["items"]]
    assert ids == [i["id"] for i in everything["items"]]  # newest first, no overlap
    assert get(model="nobody")["total"] == 0
