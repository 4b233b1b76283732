"""The out-of-domain guard of tabular models: reference fitted at training, a score per
prediction, rows far outside the training rows flagged."""

from __future__ import annotations

import numpy as np

from clearscan.inference.ood import TableOodReference, fit_table_reference
from tests.training.test_training_runs import train
from tests.training.trainers.test_tabular import breast_cancer_csv, import_table, predict_features


def test_reference_threshold_is_the_validation_quantile(tmp_path):
    rng = np.random.default_rng(0)
    cov = [[1.0, 0.8], [0.8, 1.0]]
    train_rows = np.column_stack(
        [rng.multivariate_normal([5, -2], cov, 2000), np.array(["a"] * 2000)]
    ).astype(object)
    train_rows[:, :2] = train_rows[:, :2].astype(float)
    val = rng.multivariate_normal([5, -2], cov, 1000).astype(object)
    val[3, 0] = np.nan  # a missing value is imputed with the training median
    ref = fit_table_reference(train_rows, val, [0, 1])
    assert np.mean(ref.scores(val) > 1) <= 0.01
    far = np.array([[5.0, 5.0]], dtype=object)  # against the correlation: far in Mahalanobis
    assert ref.scores(far)[0] > 1
    path = tmp_path / "ood.json"
    import json

    path.write_text(json.dumps(ref.to_json()))
    again = TableOodReference.load(path)
    assert np.allclose(again.scores(val), ref.scores(val))


def test_trained_table_model_flags_rows_far_from_its_training_rows(
    client, admin_headers, clinician_headers, tmp_path
):
    data, info = breast_cancer_csv(tmp_path)
    import_table(client, admin_headers, "bc-ood", data, "diagnosis")
    result = train(client, admin_headers, dataset="bc-ood")["result"]
    name, version = result["name"], result["version"]
    r = client.post(f"/api/v1/models/{name}/versions/{version}/activate", headers=admin_headers)
    assert r.status_code == 200, r.text
    val = [rec for rec in info["records"] if rec["split"] == "val"][:20]
    flagged = 0
    for rec in val:
        pred = predict_features(client, clinician_headers, name, rec["features"]).json()
        p = pred["predictions"][0]
        assert p["ood_score"] is not None
        flagged += p["out_of_domain"]
    assert flagged <= 1
    weird = {k: v * 50 for k, v in val[0]["features"].items()}
    p = predict_features(client, clinician_headers, name, weird).json()["predictions"][0]
    assert p["out_of_domain"] is True and p["ood_score"] > 1
