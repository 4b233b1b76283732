"""Windowed features for sensor streams (a table with a time column and, usually, a group
column: one recording per group). Each window of `length` samples, moved by `step`, inside one
recording and with one label, gives per channel: mean, std, min, max, RMS, skewness, kurtosis,
spectral energy and dominant frequency (Hz from the time column's median sampling interval; in
cycles per sample when the time column is not numeric). The same function computes the features
of a window sent to the server, so training and serving agree."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from clearscan.errors import Unprocessable

STATS = ("mean", "std", "min", "max", "rms", "skew", "kurtosis", "energy", "dominant_freq")
DEFAULT_LENGTH = 64
DEFAULT_STEP = 32


class WindowError(Unprocessable, ValueError):
    """A sensor-stream window that cannot become features (422)."""


def window_stats(window: np.ndarray, sample_rate: float) -> np.ndarray:
    """window: L x C samples -> C * len(STATS) features (channel-major)."""
    from scipy.stats import kurtosis, skew

    w = np.asarray(window, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < 4:
        raise WindowError("a window needs at least 4 samples per channel")
    if not np.isfinite(w).all():
        raise WindowError("window values must be finite numbers")
    centred = w - w.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(centred, axis=0)) ** 2
    freqs = np.fft.rfftfreq(w.shape[0], d=1.0 / sample_rate)
    const = w.std(axis=0) == 0
    with np.errstate(all="ignore"):
        sk = np.where(const, 0.0, skew(w, axis=0, bias=True))
        ku = np.where(const, 0.0, kurtosis(w, axis=0, bias=True))
    dom = np.where(spectrum[1:].sum(axis=0) > 0, freqs[1:][spectrum[1:].argmax(axis=0)], 0.0)
    feats = np.stack(
        [
            w.mean(axis=0),
            w.std(axis=0),
            w.min(axis=0),
            w.max(axis=0),
            np.sqrt((w * w).mean(axis=0)),
            sk,
            ku,
            spectrum.sum(axis=0) / w.shape[0],
            dom,
        ],
        axis=1,
    )  # C x STATS
    return feats.reshape(-1)


def feature_names(channels: list[str]) -> list[str]:
    return [f"{c}_{s}" for c in channels for s in STATS]


def sample_rate_of(times: list[str]) -> float:
    """Samples per second from the median interval of a numeric time column (1.0 otherwise)."""
    try:
        t = np.array([float(x) for x in times])
    except ValueError:
        return 1.0
    d = np.diff(t)
    d = d[d > 0]
    return float(1.0 / np.median(d)) if d.size else 1.0


def windows(
    x: np.ndarray,
    y: np.ndarray,
    splits: list[str],
    groups: list[str] | None,
    times: list[str],
    *,
    length: int = DEFAULT_LENGTH,
    step: int = DEFAULT_STEP,
    sample_rate: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """Rows (N x C float) of a sensor table -> window features, labels, splits and provenance
    (group, first and last time of each window). Windows never cross a recording or a label
    change; rows are ordered by time inside each recording."""
    if length < 4 or step < 1:
        raise WindowError("window length must be >= 4 samples and step >= 1")
    by_group: dict[str, list[int]] = defaultdict(list)
    for i in range(len(y)):
        by_group[groups[i] if groups is not None else ""].append(i)
    feats, labels, wsplits, prov = [], [], [], []

    def t_key(i: int) -> tuple[int, float, str]:
        try:
            return (0, float(times[i]), "")
        except ValueError:
            return (1, 0.0, times[i])

    for g in sorted(by_group):
        rows = sorted(by_group[g], key=t_key)
        # runs of one label (and one split) inside the recording
        start = 0
        while start < len(rows):
            end = start
            while (
                end + 1 < len(rows)
                and y[rows[end + 1]] == y[rows[start]]
                and splits[rows[end + 1]] == splits[rows[start]]
            ):
                end += 1
            run = rows[start : end + 1]
            for s in range(0, len(run) - length + 1, step):
                idx = run[s : s + length]
                block = x[idx].astype(np.float64)
                if np.isnan(block).any():
                    continue  # a window with missing samples is skipped, not imputed
                feats.append(window_stats(block, sample_rate))
                labels.append(int(y[run[0]]))
                wsplits.append(splits[run[0]])
                prov.append({"group": g, "from": times[idx[0]], "to": times[idx[-1]]})
            start = end + 1
    if not feats:
        raise WindowError(
            f"no complete window of {length} samples: recordings or label runs are shorter"
        )
    return np.vstack(feats), np.array(labels, dtype=np.int64), wsplits, prov


def window_from_json(
    values: Any, channels: list[str], length: int, sample_rate: float
) -> np.ndarray:
    """`{"channel": [samples...], ...}` from a request -> the window's features; ValueError
    naming the problem."""
    if not isinstance(values, dict):
        raise WindowError('window must be an object {"channel": [samples...]}')
    missing = [c for c in channels if c not in values]
    if missing:
        raise WindowError(f"window lacks channel(s) {missing[:10]}")
    unknown = sorted(set(values) - set(channels))
    if unknown:
        raise WindowError(f"unknown channel(s) {unknown[:10]}")
    cols = []
    for c in channels:
        v = values[c]
        if not isinstance(v, list) or len(v) != length:
            raise WindowError(f"channel {c!r} must be a list of {length} numbers")
        try:
            arr = np.array([float(s) for s in v], dtype=np.float64)
        except (TypeError, ValueError):
            raise WindowError(f"channel {c!r} holds a non-number") from None
        if not np.isfinite(arr).all() or any(isinstance(s, bool) for s in v):
            raise WindowError(f"channel {c!r} holds a non-finite value")
        cols.append(arr)
    return window_stats(np.stack(cols, axis=1), sample_rate)
