"""Sensor streams end to end with a synthetic stream of known classes: import (group-kept
validation split) -> windowed features (checked against numpy/scipy) -> training (recordings
kept whole in cross-validation) -> a window sent to the server is classified as generated."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy.stats import kurtosis, skew

from clearscan.training.features import STATS, WindowError, window_stats, windows
from tests.training.test_training_runs import train, upload

RATE = 50.0  # Hz
FREQ = {"walk": 2.0, "rest": 0.5}  # dominant frequency of channel ax per class
AMP = {"walk": 1.0, "rest": 0.3}


def stream_csv(recordings: int = 12, samples: int = 256, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["t", "ax", "ay", "device", "label", "rec"])
    for rec in range(recordings):
        label = "walk" if rec % 2 == 0 else "rest"
        for i in range(samples):
            t = i / RATE
            ax = AMP[label] * math.sin(2 * math.pi * FREQ[label] * t) + rng.normal(0, 0.05)
            ay = rng.normal(0, 0.5 if label == "walk" else 0.1)
            w.writerow([f"{t:.3f}", f"{ax:.5f}", f"{ay:.5f}", "wrist", label, f"r{rec:02d}"])
    return out.getvalue().encode()


def sine_window(label: str, n: int = 64, seed: int = 5) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    ax = AMP[label] * np.sin(2 * np.pi * FREQ[label] * t + 0.3) + rng.normal(0, 0.05, n)
    ay = rng.normal(0, 0.5 if label == "walk" else 0.1, n)
    return {"ax": ax.tolist(), "ay": ay.tolist()}


def test_window_stats_match_numpy_and_scipy():
    rng = np.random.default_rng(1)
    t = np.arange(128) / RATE
    block = np.stack([np.sin(2 * np.pi * 5.0 * t), rng.normal(2.0, 1.0, 128)], axis=1)
    got = window_stats(block, RATE).reshape(2, len(STATS))
    for c in range(2):
        x = block[:, c]
        centred = x - x.mean()
        energy = (np.abs(np.fft.rfft(centred)) ** 2).sum() / len(x)
        expected = [
            x.mean(),
            x.std(),
            x.min(),
            x.max(),
            np.sqrt((x**2).mean()),
            skew(x),
            kurtosis(x),
            energy,
        ]
        assert np.allclose(got[c, :8], expected, rtol=1e-9, atol=1e-12)
    assert got[0, STATS.index("dominant_freq")] == pytest.approx(5.0, abs=0.4)
    # a constant channel has no skew/kurtosis/frequency (0, not NaN)
    flat = window_stats(np.ones((16, 1)), RATE)
    assert np.isfinite(flat).all() and flat[STATS.index("dominant_freq")] == 0.0
    with pytest.raises(WindowError):
        window_stats(np.ones((3, 1)), RATE)


def test_windows_never_cross_recordings_or_labels():
    x = np.arange(20, dtype=float)[:, None]
    y = np.array([0] * 10 + [1] * 10)
    groups = ["a"] * 6 + ["b"] * 14  # b holds a label change at row 10
    times = [str(i) for i in range(20)]
    feats, labels, _splits, prov = windows(
        x, y, ["train"] * 20, groups, times, length=4, step=2, sample_rate=1.0
    )
    # a: rows 0-5 -> windows at 0, 2; b/label 0: rows 6-9 -> 6; b/label 1: rows 10-19 -> 4 windows
    assert [(p["group"], p["from"]) for p in prov] == [
        ("a", "0"),
        ("a", "2"),
        ("b", "6"),
        ("b", "10"),
        ("b", "12"),
        ("b", "14"),
        ("b", "16"),
    ]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert feats.shape == (7, len(STATS))
    with pytest.raises(WindowError, match="no complete window"):
        windows(x, y, ["train"] * 20, groups, times, length=50, step=1, sample_rate=1.0)


def test_sensor_stream_end_to_end(client, admin_headers, clinician_headers):
    ds = upload(
        client,
        admin_headers,
        "gait",
        stream_csv(),
        filename="gait.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )
    assert ds["kind"] == "table" and "validation" in ds["info"]["splits"]
    assert any("constant" in w and "device" in w for w in ds["warnings"])
    # the feature table the run will use
    r = client.get(f"/api/v1/datasets/{ds['id']}/features/preview?limit=5", headers=admin_headers)
    assert r.status_code == 200, r.text
    prev = r.json()
    assert prev["window"]["channels"] == ["ax", "ay"]
    assert prev["window"]["sample_rate"] == pytest.approx(RATE, rel=1e-6)
    names = [f["name"] for f in prev["features"]]
    assert names == [f"{c}_{s}" for c in ("ax", "ay") for s in STATS]
    # 12 recordings x 256 samples, windows of 64 every 32 -> 7 per recording
    assert prev["n_rows"] == 12 * 7
    for row in prev["rows"]:
        want = FREQ[row["label"]]
        assert row["values"]["ax_dominant_freq"] == pytest.approx(want, abs=50 / 64)

    run = train(client, admin_headers, dataset="gait", seed=0)
    result = run["result"]
    assert result["val_metrics"]["accuracy"] == 1.0
    assert all(v["auc_mean"] >= 0.99 for v in result["cross_validation"].values())
    name, version = result["name"], result["version"]
    r = client.post(f"/api/v1/models/{name}/versions/{version}/activate", headers=admin_headers)
    assert r.status_code == 200, r.text
    for label in ("walk", "rest"):
        r = client.post(
            "/api/v1/predict",
            headers=clinician_headers,
            json={"model": name, "window": sine_window(label)},
        )
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        assert pred["top_label"] == label
        assert len(pred["contributions"]) == 2 * len(STATS)
    bad = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        json={"model": name, "window": {"ax": [0.0] * 64}},
    )
    assert bad.status_code == 422 and "ay" in bad.json()["detail"]
    short = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        json={"model": name, "window": {"ax": [0.0] * 10, "ay": [0.0] * 10}},
    )
    assert short.status_code == 422 and "64" in short.json()["detail"]
    # the preview now shows the trained model's feature importance
    prev = client.get(f"/api/v1/datasets/{ds['id']}/features/preview", headers=admin_headers)
    assert prev.json()["importance"]["model"] == f"{name}:{version}"


def test_window_options_are_checked(client, admin_headers):
    upload(
        client,
        admin_headers,
        "gait2",
        stream_csv(recordings=12, samples=80),
        filename="g.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )
    r = client.post(
        "/api/v1/training-runs", headers=admin_headers, json={"dataset": "gait2", "window": 2}
    )
    assert r.status_code == 422
    # windows longer than the recordings: the run fails with that reason, nothing registered
    r = client.post(
        "/api/v1/training-runs", headers=admin_headers, json={"dataset": "gait2", "window": 200}
    )
    assert r.status_code == 202
    from tests.training.test_training_runs import wait_run

    run = wait_run(client, admin_headers, r.json()["id"])
    assert run["status"] == "failed" and "no complete window" in run["error"]
