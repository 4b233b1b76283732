"""Evaluation metrics: point estimates with 95% bootstrap intervals, per-class precision /
recall / F1, confusion matrix, ROC and calibration curves with expected calibration error.

Inputs: true class indices `y` (N), decided class indices `pred` (N, the model's own decision,
threshold included) and class probabilities `prob` (N x C). scikit-learn's metric functions
are the oracle in the tests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# --- the trainers' scores (no PyTorch here: the server imports this module) ---------------------


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC via the Mann-Whitney U statistic with mid-ranks for ties."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # mid-ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """AUC of class 1 for two classes; one-vs-rest macro average for more."""
    if prob.shape[1] == 2:
        return roc_auc(y_true == 1, prob[:, 1])
    aucs = [roc_auc(y_true == k, prob[:, k]) for k in range(prob.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def choose_threshold(
    y_true: np.ndarray, prob: np.ndarray, tolerance: float = 0.005
) -> tuple[float, float]:
    """Threshold on P(class 1) for balanced accuracy; returns (t, balanced accuracy).

    Candidates are midpoints between consecutive distinct scores. A single best candidate is
    often a narrow peak decided by one or two images, so every candidate within `tolerance` of
    the best balanced accuracy counts as optimal and the median of that plateau is taken."""
    y = np.asarray(y_true).astype(int).ravel()
    s = np.unique(np.asarray(prob, dtype=np.float64).ravel())
    cands = np.concatenate([[s[0] / 2.0], (s[:-1] + s[1:]) / 2.0, [(s[-1] + 1.0) / 2.0]])
    pos, neg = prob[y == 1], prob[y == 0]
    sens = (pos[None, :] >= cands[:, None]).mean(axis=1)
    spec = (neg[None, :] < cands[:, None]).mean(axis=1)
    bacc = (sens + spec) / 2.0
    best = np.flatnonzero(bacc >= bacc.max() - tolerance - 1e-12)
    idx = int(best[len(best) // 2])
    return float(cands[idx]), float(bacc[idx])


def classification_metrics(y: np.ndarray, pred: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """Accuracy, AUC, balanced accuracy (and, for two classes, sensitivity/specificity)."""
    n_classes = prob.shape[1]
    recalls = [float((pred[y == k] == k).mean()) for k in range(n_classes) if (y == k).any()]
    auc = macro_auc(y, prob)
    out: dict[str, Any] = {
        "n": len(y),
        "accuracy": round(float((pred == y).mean()), 5),
        "auc": None if math.isnan(auc) else round(auc, 5),  # null: a class is absent
        "balanced_accuracy": round(float(np.mean(recalls)), 5),
    }
    if n_classes == 2:
        out["sensitivity"] = round(float((pred[y == 1] == 1).mean()), 5) if (y == 1).any() else None
        out["specificity"] = round(float((pred[y == 0] == 0).mean()), 5) if (y == 0).any() else None
    return out


# --- evaluation reports ---------------------------------------------------------------------------

BOOTSTRAP = 1000
BINS = 10


def _point(y: np.ndarray, pred: np.ndarray, prob: np.ndarray, positive: int | None) -> dict:
    present = [k for k in range(prob.shape[1]) if (y == k).any()]
    recalls = [float((pred[y == k] == k).mean()) for k in present]
    out = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "auc": macro_auc(y, prob),
    }
    if positive is not None:
        pos, neg = y == positive, y != positive
        out["sensitivity"] = float((pred[pos] == positive).mean()) if pos.any() else math.nan
        out["specificity"] = float((pred[neg] != positive).mean()) if neg.any() else math.nan
    return out


def bootstrap_intervals(
    y: np.ndarray,
    pred: np.ndarray,
    prob: np.ndarray,
    positive: int | None,
    *,
    n: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile 95% intervals over `n` resamples of the cases (with replacement)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        for k, v in _point(y[idx], pred[idx], prob[idx], positive).items():
            samples.setdefault(k, []).append(v)
    out = {}
    for k, vals in samples.items():
        arr = np.array([v for v in vals if not math.isnan(v)])
        out[k] = (
            [round(float(np.percentile(arr, 2.5)), 5), round(float(np.percentile(arr, 97.5)), 5)]
            if arr.size
            else [math.nan, math.nan]
        )
    return out


def roc_curve_points(y_bin: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict:
    """False/true positive rates at every distinct threshold (thinned to `max_points`)."""
    from sklearn.metrics import roc_curve

    if y_bin.all() or not y_bin.any():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y_bin, score)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def calibration(y: np.ndarray, pred: np.ndarray, prob: np.ndarray, bins: int = BINS) -> dict:
    """Reliability of the decided class's probability: per equal-width bin of confidence, the
    mean confidence, the accuracy and the count; ECE = sum_b (n_b / N) |acc_b - conf_b|."""
    conf = prob[np.arange(len(pred)), pred]
    correct = (pred == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        if n == 0:
            continue
        c, a = float(conf[m].mean()), float(correct[m].mean())
        ece += n / len(y) * abs(a - c)
        rows.append(
            {
                "lo": round(float(edges[b]), 3),
                "hi": round(float(edges[b + 1]), 3),
                "n": n,
                "confidence": round(c, 5),
                "accuracy": round(a, 5),
            }
        )
    return {"bins": rows, "ece": round(ece, 5)}


def _json_ready(value: Any) -> Any:
    """NaN (a metric undefined on this split, e.g. AUC without positives) -> None (null)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def evaluate_predictions(
    y: np.ndarray, pred: np.ndarray, prob: np.ndarray, labels: list[str], *, positive: int | None
) -> dict[str, Any]:
    """Everything the evaluation report shows, as JSON-ready values."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    c = len(labels)
    point = {k: round(v, 5) for k, v in _point(y, pred, prob, positive).items()}
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=0)
    per_class = [
        {
            "label": labels[k],
            "precision": round(float(p[k]), 5),
            "recall": round(float(r[k]), 5),
            "f1": round(float(f[k]), 5),
            "support": int(s[k]),
        }
        for k in range(c)
    ]
    if c == 2:
        roc = {labels[1]: roc_curve_points(y == 1, prob[:, 1])}
    else:
        roc = {labels[k]: roc_curve_points(y == k, prob[:, k]) for k in range(c)}
    return {
        "n": len(y),
        "metrics": _json_ready(point),
        "ci95": _json_ready(bootstrap_intervals(y, pred, prob, positive)),
        "per_class": per_class,
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(y, pred, labels=list(range(c))).tolist(),
        },
        "roc": roc,
        "calibration": calibration(y, pred, prob),
        "positive_label": labels[positive] if positive is not None else None,
    }
