"""Per-feature contributions of a tabular prediction: how much the log-odds of the decided class
drop when that feature alone is replaced by its training baseline (median / mode). One
`predict_rows` call for the row and all its variants; log-odds, so features still count when the
probability is saturated near 0 or 1."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["feature_contributions"]


def feature_contributions(
    row: np.ndarray,
    baseline: np.ndarray,
    predict_rows: Callable[[np.ndarray], np.ndarray],
    decide: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, int, list[float]]:
    """(probabilities of `row`, its decided class, one contribution per feature). `row` and
    `baseline` are 1-D object arrays of raw feature values; `predict_rows` maps N x F rows to
    N x C probabilities; `decide` maps N x C probabilities to N class indices."""
    n = len(baseline)
    rows = np.repeat(row[None, :], n + 1, axis=0)
    for i in range(n):
        rows[i + 1, i] = baseline[i]
    probs = predict_rows(rows)
    top = int(decide(probs[:1])[0])
    p = np.clip(probs[:, top], 1e-15, 1 - 1e-15)
    logodds = np.log(p) - np.log1p(-p)
    contrib = logodds[0] - logodds[1:]
    return probs[0], top, [round(float(c), 4) for c in contrib]
