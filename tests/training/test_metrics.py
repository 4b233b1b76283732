"""Evaluation metrics against scikit-learn as the oracle: point estimates, per-class precision /
recall / F1, confusion matrix, ROC curves (random inputs, ties, perfect and inverted classifiers,
three classes); expected calibration error by hand; percentile bootstrap intervals (contain the
estimate, deterministic, narrower with more data, survive resamples that miss a class)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from clearscan.training.metrics import (
    bootstrap_intervals,
    calibration,
    choose_threshold,
    classification_metrics,
    evaluate_predictions,
    macro_auc,
    roc_auc,
    roc_curve_points,
)

# --- helpers --------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_binary(n: int, seed: int, *, signal: float = 1.0, threshold: float = 0.5):
    """Labels, decisions at `threshold` on P(class 1), and N x 2 probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    logit = signal * (2 * y - 1) + rng.normal(0, 1.0, n)
    p1 = 1 / (1 + np.exp(-logit))
    prob = np.stack([1 - p1, p1], axis=1)
    pred = (prob[:, 1] >= threshold).astype(np.int64)
    return y.astype(np.int64), pred, prob


def make_multi(n: int, c: int, seed: int, *, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    z = rng.normal(0, 1.0, (n, c))
    z[np.arange(n), y] += signal
    prob = softmax(z)
    return y.astype(np.int64), prob.argmax(axis=1).astype(np.int64), prob


def check_against_sklearn(y, pred, prob, labels, positive):
    """Every number evaluate_predictions reports, checked against scikit-learn."""
    c = len(labels)
    out = evaluate_predictions(y, pred, prob, labels, positive=positive)
    m = out["metrics"]
    assert out["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-5)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-5)
    if c == 2:
        want_auc = roc_auc_score(y, prob[:, 1])
    else:
        want_auc = roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=range(c))
    assert m["auc"] == pytest.approx(want_auc, abs=1e-5)
    cm = confusion_matrix(y, pred, labels=list(range(c)))
    assert out["confusion"] == {"labels": labels, "matrix": cm.tolist()}
    assert sum(map(sum, out["confusion"]["matrix"])) == len(y)
    if positive is not None:
        tp = cm[positive, positive]
        pos = cm[positive].sum()
        neg_rows = [k for k in range(c) if k != positive]
        tn = sum(cm[k, j] for k in neg_rows for j in range(c) if j != positive)
        neg = sum(cm[k].sum() for k in neg_rows)
        assert m["sensitivity"] == pytest.approx(tp / pos, abs=1e-5)
        assert m["specificity"] == pytest.approx(tn / neg, abs=1e-5)
        assert out["positive_label"] == labels[positive]
    else:
        assert "sensitivity" not in m and "specificity" not in m
        assert out["positive_label"] is None
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=0)
    assert [row["label"] for row in out["per_class"]] == labels
    for k, row in enumerate(out["per_class"]):
        assert row["precision"] == pytest.approx(p[k], abs=1e-5)
        assert row["recall"] == pytest.approx(r[k], abs=1e-5)
        assert row["f1"] == pytest.approx(f[k], abs=1e-5)
        assert row["support"] == s[k]
    # ROC: the positive class only for two classes, one-vs-rest for more
    expected_keys = [labels[1]] if c == 2 else labels
    assert list(out["roc"]) == expected_keys
    for key in expected_keys:
        k = labels.index(key)
        fpr, tpr, _ = roc_curve(y == k, prob[:, k])
        got = out["roc"][key]
        if len(fpr) <= 200:
            np.testing.assert_allclose(got["fpr"], fpr, atol=1e-5)
            np.testing.assert_allclose(got["tpr"], tpr, atol=1e-5)
        # the trapezoid under the reported curve is the AUC of that class
        assert np.trapezoid(got["tpr"], got["fpr"]) == pytest.approx(
            roc_auc_score(y == k, prob[:, k]), abs=2e-3 if len(fpr) > 200 else 1e-4
        )
    # JSON-ready as promised
    json.loads(json.dumps(out, allow_nan=False))
    return out


# --- point estimates against scikit-learn -------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_random_matches_sklearn(seed, threshold):
    y, pred, prob = make_binary(150, seed, threshold=threshold)
    out = check_against_sklearn(y, pred, prob, ["normal", "abnormal"], positive=1)
    # decisions come from `pred` (the model's own threshold), not from argmax of prob
    assert out["metrics"]["accuracy"] == pytest.approx(float((pred == y).mean()), abs=1e-5)


def test_binary_positive_class_zero_swaps_sensitivity_and_specificity():
    y, pred, prob = make_binary(120, 5)
    a = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)["metrics"]
    b = check_against_sklearn(y, pred, prob, ["n", "p"], positive=0)["metrics"]
    assert a["sensitivity"] == b["specificity"] and a["specificity"] == b["sensitivity"]


@pytest.mark.parametrize("seed", [0, 1])
def test_three_classes_match_sklearn(seed):
    y, pred, prob = make_multi(200, 3, seed)
    check_against_sklearn(y, pred, prob, ["a", "b", "c"], positive=None)


def test_three_classes_with_a_positive_class_match_sklearn():
    y, pred, prob = make_multi(180, 3, 7, signal=0.7)
    check_against_sklearn(y, pred, prob, ["a", "b", "c"], positive=2)


def test_many_distinct_scores_thin_the_roc_but_keep_its_area():
    y, pred, prob = make_binary(3000, 3, signal=0.3)  # weak signal: many ROC vertices
    out = check_against_sklearn(y, pred, prob, ["n", "p"], positive=1)
    assert len(roc_curve(y, prob[:, 1])[0]) > 200
    roc = out["roc"]["p"]
    assert 2 <= len(roc["fpr"]) <= 200
    assert roc["fpr"][0] == 0.0 and roc["tpr"][0] == 0.0
    assert roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    assert all(np.diff(roc["fpr"]) >= 0) and all(np.diff(roc["tpr"]) >= 0)


def test_ties_in_scores_match_sklearn():
    rng = np.random.default_rng(11)
    n = 200
    y = rng.integers(0, 2, n)
    # only five distinct scores: lots of ties, across both classes
    p1 = np.round(np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1) * 4) / 4
    prob = np.stack([1 - p1, p1], axis=1)
    assert len(np.unique(p1)) <= 5
    pred = (p1 >= 0.5).astype(np.int64)
    out = check_against_sklearn(y, pred, prob, ["n", "p"], positive=1)
    assert len(out["roc"]["p"]["fpr"]) <= 6
    assert roc_auc(y, p1) == pytest.approx(roc_auc_score(y, p1), abs=1e-12)


def test_all_scores_tied_is_auc_one_half():
    y = np.array([0, 1, 0, 1, 1, 0])
    p1 = np.full(6, 0.4)
    prob = np.stack([1 - p1, p1], axis=1)
    pred = np.zeros(6, dtype=np.int64)
    out = check_against_sklearn(y, pred, prob, ["n", "p"], positive=1)
    assert out["metrics"]["auc"] == 0.5
    assert out["metrics"]["sensitivity"] == 0.0 and out["metrics"]["specificity"] == 1.0


def test_perfect_classifier():
    y = np.array([0] * 20 + [1] * 30)
    p1 = np.where(y == 1, 0.9, 0.1) + np.linspace(-0.05, 0.05, 50)
    prob = np.stack([1 - p1, p1], axis=1)
    out = check_against_sklearn(y, y.copy(), prob, ["n", "p"], positive=1)
    m = out["metrics"]
    assert m == {
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
        "auc": 1.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
    }
    assert out["confusion"]["matrix"] == [[20, 0], [0, 30]]
    assert all(row["f1"] == 1.0 for row in out["per_class"])
    # a perfect bootstrap has degenerate intervals at 1
    assert all(ci == [1.0, 1.0] for ci in out["ci95"].values())


def test_inverted_classifier():
    y = np.array([0] * 25 + [1] * 15)
    p1 = np.where(y == 1, 0.2, 0.8)
    prob = np.stack([1 - p1, p1], axis=1)
    pred = 1 - y
    out = check_against_sklearn(y, pred, prob, ["n", "p"], positive=1)
    m = out["metrics"]
    assert m["accuracy"] == 0.0 and m["auc"] == 0.0 and m["balanced_accuracy"] == 0.0
    assert m["sensitivity"] == 0.0 and m["specificity"] == 0.0
    assert out["confusion"]["matrix"] == [[0, 25], [15, 0]]
    assert out["roc"]["p"]["tpr"][-1] == 1.0


def test_three_class_perfect_and_inverted():
    y = np.repeat(np.arange(3), 10)
    prob = np.full((30, 3), 0.1)
    prob[np.arange(30), y] = 0.8
    out = check_against_sklearn(y, y.copy(), prob, ["a", "b", "c"], positive=None)
    assert out["metrics"]["auc"] == 1.0 and out["metrics"]["accuracy"] == 1.0
    wrong = (y + 1) % 3
    inv = np.full((30, 3), 0.45)
    inv[np.arange(30), y] = 0.1
    out = check_against_sklearn(y, wrong, inv, ["a", "b", "c"], positive=None)
    assert out["metrics"]["auc"] == 0.0 and out["metrics"]["accuracy"] == 0.0


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1])
    prob = softmax(np.eye(3)[pred] * 2.0)
    out = check_against_sklearn(y, pred, prob, ["a", "b", "c"], positive=None)
    c = out["per_class"][2]
    assert c["precision"] == 0.0 and c["recall"] == 0.0 and c["f1"] == 0.0 and c["support"] == 2


def test_image_helpers_match_sklearn():
    y, _, prob = make_multi(150, 4, 3)
    want = roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert macro_auc(y, prob) == pytest.approx(want, abs=1e-12)
    yb, predb, probb = make_binary(150, 4)
    assert macro_auc(yb, probb) == pytest.approx(roc_auc_score(yb, probb[:, 1]), abs=1e-12)
    assert math.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))
    m = classification_metrics(yb, predb, probb)
    assert m["n"] == 150
    assert m["accuracy"] == pytest.approx(accuracy_score(yb, predb), abs=1e-5)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yb, predb), abs=1e-5)
    assert m["auc"] == pytest.approx(roc_auc_score(yb, probb[:, 1]), abs=1e-5)
    cm = confusion_matrix(yb, predb)
    assert m["sensitivity"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-5)
    assert m["specificity"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-5)


def test_choose_threshold_reaches_the_best_balanced_accuracy():
    y, _, prob = make_binary(300, 9, signal=1.2)
    t, bacc = choose_threshold(y, prob[:, 1])
    assert 0 < t < 1
    pred = (prob[:, 1] >= t).astype(int)
    assert bacc == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    best = max(
        balanced_accuracy_score(y, (prob[:, 1] >= s).astype(int)) for s in np.unique(prob[:, 1])
    )
    assert bacc >= best - 0.005 - 1e-12


def test_roc_curve_points_of_one_class_only_is_empty():
    assert roc_curve_points(np.ones(4, dtype=bool), np.linspace(0, 1, 4)) == {"fpr": [], "tpr": []}
    assert roc_curve_points(np.zeros(4, dtype=bool), np.linspace(0, 1, 4)) == {
        "fpr": [],
        "tpr": [],
    }


# --- calibration ----------------------------------------------------------------------------------


def test_expected_calibration_error_by_hand():
    # decided-class confidences and whether each decision was right:
    #   0.55 right, 0.58 wrong  -> bin (0.5, 0.6]: conf 0.565, acc 0.5, n 2
    #   0.72 wrong              -> bin (0.7, 0.8]: conf 0.72,  acc 0.0, n 1
    #   0.92 right, 0.96 right  -> bin (0.9, 1.0]: conf 0.94,  acc 1.0, n 2
    # ECE = 2/5 * 0.065 + 1/5 * 0.72 + 2/5 * 0.06 = 0.026 + 0.144 + 0.024 = 0.194
    conf = np.array([0.55, 0.58, 0.72, 0.92, 0.96])
    pred = np.array([1, 0, 1, 0, 1])
    y = np.array([1, 1, 0, 0, 1])
    prob = np.empty((5, 2))
    prob[np.arange(5), pred] = conf
    prob[np.arange(5), 1 - pred] = 1 - conf
    cal = calibration(y, pred, prob)
    assert cal["ece"] == pytest.approx(0.194, abs=1e-5)
    assert cal["bins"] == [
        {"lo": 0.5, "hi": 0.6, "n": 2, "confidence": 0.565, "accuracy": 0.5},
        {"lo": 0.7, "hi": 0.8, "n": 1, "confidence": 0.72, "accuracy": 0.0},
        {"lo": 0.9, "hi": 1.0, "n": 2, "confidence": 0.94, "accuracy": 1.0},
    ]
    # the same through evaluate_predictions
    out = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)
    assert out["calibration"] == cal


def test_calibration_uses_the_decided_class_even_below_one_half():
    # a low threshold decides class 1 at P = 0.32 and 0.36: those are the confidences binned
    y = np.array([1, 0])
    pred = np.array([1, 1])
    prob = np.array([[0.68, 0.32], [0.64, 0.36]])
    cal = calibration(y, pred, prob)
    assert [b["n"] for b in cal["bins"]] == [2]
    assert cal["bins"][0]["lo"] == 0.3 and cal["bins"][0]["hi"] == 0.4
    assert cal["ece"] == pytest.approx(abs(0.5 - 0.34), abs=1e-5)


def test_perfectly_calibrated_bins_have_no_error():
    # 10 decisions at confidence 0.8 of which 8 are right; 10 at 0.6 of which 6 are right
    y = np.array([1] * 8 + [0] * 2 + [1] * 6 + [0] * 4)
    pred = np.ones(20, dtype=np.int64)
    p1 = np.array([0.8] * 10 + [0.6] * 10)
    prob = np.stack([1 - p1, p1], axis=1)
    assert calibration(y, pred, prob)["ece"] == pytest.approx(0.0, abs=1e-9)


# --- bootstrap intervals --------------------------------------------------------------------------


def test_intervals_contain_the_estimate_and_are_deterministic():
    y, pred, prob = make_binary(300, 21)
    out = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)
    assert (
        set(out["ci95"])
        == set(out["metrics"])
        == {
            "accuracy",
            "balanced_accuracy",
            "auc",
            "sensitivity",
            "specificity",
        }
    )
    for k, v in out["metrics"].items():
        lo, hi = out["ci95"][k]
        assert lo <= v <= hi, (k, lo, v, hi)
        assert lo < hi, k
    again = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)
    assert again["ci95"] == out["ci95"]
    assert bootstrap_intervals(y, pred, prob, 1, seed=0) == out["ci95"]
    # another seed is another set of resamples
    assert bootstrap_intervals(y, pred, prob, 1, seed=1) != out["ci95"]


def test_intervals_of_three_classes_contain_the_estimate():
    y, pred, prob = make_multi(240, 3, 4)
    out = evaluate_predictions(y, pred, prob, ["a", "b", "c"], positive=None)
    assert set(out["ci95"]) == {"accuracy", "balanced_accuracy", "auc"}
    for k, v in out["metrics"].items():
        lo, hi = out["ci95"][k]
        assert lo <= v <= hi, (k, lo, v, hi)


def test_intervals_narrow_with_more_data():
    small = make_binary(100, 30)
    large = make_binary(5000, 31)
    ci_s = bootstrap_intervals(*small, 1, n=300)
    ci_l = bootstrap_intervals(*large, 1, n=300)
    for k in ci_s:
        w_s = ci_s[k][1] - ci_s[k][0]
        w_l = ci_l[k][1] - ci_l[k][0]
        # the width shrinks like 1 / sqrt(n): ~7 times narrower; at least 3 times here
        assert w_l * 3 < w_s, (k, w_s, w_l)


@pytest.mark.parametrize("n_cases", [2, 3, 4])
def test_tiny_samples_with_resamples_missing_a_class_do_not_crash(n_cases):
    y = np.array([0, 1, 1, 0][:n_cases])
    p1 = np.array([0.2, 0.9, 0.4, 0.6][:n_cases])
    prob = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= 0.5).astype(np.int64)
    out = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)
    for k, (lo, hi) in out["ci95"].items():
        assert not math.isnan(lo) and not math.isnan(hi), k
        assert 0.0 <= lo <= hi <= 1.0, k
    # with two cases many resamples hold one class only (no AUC there): the rest still count
    ci = bootstrap_intervals(y, pred, prob, 1, n=200)
    assert ci == bootstrap_intervals(y, pred, prob, 1, n=200)


def test_one_class_only_gives_nan_auc_interval_not_a_crash():
    y = np.zeros(6, dtype=np.int64)
    p1 = np.linspace(0.1, 0.6, 6)
    prob = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= 0.5).astype(np.int64)
    ci = bootstrap_intervals(y, pred, prob, 1, n=50)
    assert all(math.isnan(v) for v in ci["auc"])
    assert all(math.isnan(v) for v in ci["sensitivity"])
    assert ci["specificity"][0] <= ci["specificity"][1]


def test_a_split_with_one_class_gives_json_ready_values():
    y = np.zeros(8, dtype=np.int64)
    p1 = np.linspace(0.1, 0.7, 8)
    prob = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= 0.5).astype(np.int64)
    out = evaluate_predictions(y, pred, prob, ["n", "p"], positive=1)
    json.dumps(out, allow_nan=False)
