"""Canary and shadow roll-outs through the API."""

from __future__ import annotations

import time

from clearscan.registry.routing import bucket
from tests.conftest import png_bytes
from tests.registry.test_versions_api import _import, package_zip


def _predict(client, headers):
    r = client.post(
        "/api/v1/predict", headers=headers, files=[("file", ("x.png", png_bytes(), "image/png"))]
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_canary_routes_a_deterministic_share(client, admin_headers, clinician_headers):
    assert _import(client, admin_headers, package_zip("1.1.0")).status_code == 201
    r = client.put(
        "/api/v1/models/pneumonia-cxr/rollout",
        headers=admin_headers,
        json={"canary": {"version": "1.1.0", "percent": 30}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["canary"] == {"version": "1.1.0", "percent": 30}
    seen = []
    for _ in range(40):
        body = _predict(client, clinician_headers)
        version = body["predictions"][0]["model"]["version"]
        expected = "1.1.0" if bucket(body["case_id"]) < 30 else "1.0.0"
        assert version == expected  # deterministic per case id, recorded on the prediction
        seen.append(version)
    assert 0 < seen.count("1.1.0") < 40
    case = client.get(f"/api/v1/cases/{body['case_id']}", headers=clinician_headers).json()
    assert case["images"][0]["predictions"][0]["model"]["version"] == version
    # clear it
    r = client.put("/api/v1/models/pneumonia-cxr/rollout", headers=admin_headers, json={})
    assert r.json()["canary"] is None
    assert {
        _predict(client, clinician_headers)["predictions"][0]["model"]["version"] for _ in range(5)
    } == {"1.0.0"}


def test_rollout_validation(client, admin_headers):
    _import(client, admin_headers, package_zip("1.1.0"))
    url = "/api/v1/models/pneumonia-cxr/rollout"
    r = client.put(
        url, headers=admin_headers, json={"canary": {"version": "1.1.0", "percent": 101}}
    )
    assert r.status_code == 422 and "percent" in r.json()["detail"]
    r = client.put(url, headers=admin_headers, json={"canary": {"version": "1.1.0", "percent": -1}})
    assert r.status_code == 422
    r = client.put(url, headers=admin_headers, json={"canary": {"version": "7.7.7", "percent": 5}})
    assert r.status_code == 404
    r = client.put(url, headers=admin_headers, json={"shadow": {"version": "1.0.0"}})
    assert r.status_code == 409 and "active" in r.json()["detail"]
    r = client.get("/api/v1/models/pneumonia-cxr/rollout/report", headers=admin_headers)
    assert r.status_code == 409


def _always_normal_package(version: str) -> bytes:
    """The bundled network with its head biased so that it always answers 'normal'."""
    import hashlib
    import io
    import json
    import zipfile

    import onnx
    from onnx import numpy_helper

    from tests.registry.test_versions_api import BUNDLED

    model = onnx.load(str(BUNDLED / "model.onnx"))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    bias = next(t for t in model.graph.initializer if t.name == gemm.input[2])
    b = numpy_helper.to_array(bias).copy()
    b[0] += 100.0
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    weights = model.SerializeToString()
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    manifest["version"] = version
    manifest["files"]["model.onnx"] = hashlib.sha256(weights).hexdigest()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("model.onnx", weights)
        for f in manifest["files"]:
            if f != "model.onnx":
                zf.write(BUNDLED / f, f)
    return buf.getvalue()


def test_shadow_runs_after_reply_and_reports_agreement(client, admin_headers, clinician_headers):
    assert _import(client, admin_headers, _always_normal_package("1.2.0")).status_code == 201
    r = client.put(
        "/api/v1/models/pneumonia-cxr/rollout",
        headers=admin_headers,
        json={"shadow": {"version": "1.2.0"}},
    )
    assert r.status_code == 200
    preds = [_predict(client, clinician_headers)["predictions"][0] for _ in range(6)]
    assert {p["model"]["version"] for p in preds} == {"1.0.0"}  # the shadow is never served
    deadline = time.monotonic() + 10
    while True:
        rep = client.get(
            "/api/v1/models/pneumonia-cxr/rollout/report", headers=admin_headers
        ).json()
        if rep["n"] >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rep["n"] == 6 and rep["shadow_version"] == "1.2.0"
    assert rep["labels"] == ["normal", "pneumonia"]
    served_normal = sum(p["top_label"] == "normal" for p in preds)
    # rows: served label; columns: shadow label (always 'normal')
    assert rep["confusion"] == [[served_normal, 0], [6 - served_normal, 0]]
    assert rep["agreement"] == round(served_normal / 6, 4)
    assert rep["per_label"]["normal"]["shadow"] == 6
    if 6 - served_normal:
        assert rep["per_label"]["pneumonia"]["agreement"] == 0.0
    assert rep["latency_ms"]["shadow_p50"] is not None
