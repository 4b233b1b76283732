"""Health, readiness, metrics, security headers and docs."""

from __future__ import annotations

from tests.conftest import ADMIN_PASSWORD, login, png_bytes


def test_healthz_readyz_health(client, admin_headers):
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"]
    h = client.get("/api/v1/health", headers=admin_headers).json()
    assert h["database"]["ok"] and h["storage"]["ok"] and h["version"]
    assert any(m["name"] == "pneumonia-cxr" and m["available"] for m in h["models"])
    assert h["status"] == "ok" and h["unavailable_models"] == [] and h["model_problems"] == []


def test_readyz_503_when_default_model_missing(settings):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app

    s = settings.model_copy(update={"default_model": "not-installed"})
    with TestClient(create_app(s)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["default_model"] is False


def test_metrics_count_requests_and_predictions(client, clinician_headers):
    client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    text = client.get("/metrics").text
    assert (
        'clearscan_http_requests_total{method="POST",route="/api/v1/predict",status="200"}' in text
    )
    assert "clearscan_predictions_total{label=" in text and 'model="pneumonia-cxr"' in text
    assert "clearscan_inference_seconds_bucket" in text
    assert "clearscan_http_request_duration_seconds_bucket" in text


def test_security_headers_and_no_cors(client):
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert "access-control-allow-origin" not in r.headers


def test_docs_served_locally(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in r.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/predict" in spec["paths"]


def test_errors_are_json_detail(client):
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and "detail" in r.json()


def test_metrics_token_guards_the_endpoint_when_set(settings):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app

    token = "scrape-secret-0123456789"
    with TestClient(create_app(settings.model_copy(update={"metrics_token": token}))) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": token},
        ):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "CLEARSCAN_METRICS_TOKEN" in r.json()["detail"]
        r = c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "clearscan_" in r.text


def test_metrics_token_must_not_be_trivially_short(tmp_path):
    import pytest
    from pydantic import ValidationError

    from clearscan.config import Settings

    with pytest.raises(ValidationError, match="metrics_token"):
        Settings(data_dir=tmp_path, metrics_token="short")


def test_health_names_every_unavailable_version_and_says_degraded(client, admin_headers, settings):
    """A version whose weights fail their sha256 check at start-up: the last good version
    serves, and health says which version cannot load, why, and that the service is degraded."""
    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from tests.registry.test_versions_api import _import, package_zip

    assert client.get("/api/v1/health").json()["status"] == "ok"
    for version in ("5.0.0", "5.1.0"):
        assert _import(client, admin_headers, package_zip(version)).status_code == 201
    for version in ("5.0.0", "5.1.0"):
        r = client.post(
            f"/api/v1/models/pneumonia-cxr/versions/{version}/activate", headers=admin_headers
        )
        assert r.status_code == 200, r.text
    for version in ("5.0.0", "5.1.0"):  # the active version, and the first it falls back to
        weights = settings.data_dir / "models" / "pneumonia-cxr" / version / "model.onnx"
        weights.chmod(0o644)
        raw = bytearray(weights.read_bytes())
        raw[1000] ^= 0xFF
        weights.write_bytes(bytes(raw))
    with TestClient(create_app(settings)) as c:  # a restart
        h = c.get("/api/v1/health", headers=login(c, "admin", ADMIN_PASSWORD)).json()
        assert h["status"] == "degraded"
        assert [m["version"] for m in h["models"] if m["name"] == "pneumonia-cxr"] == ["1.0.0"]
        unavailable = {(m["name"], m["version"]): m["error"] for m in h["unavailable_models"]}
        assert set(unavailable) == {("pneumonia-cxr", "5.1.0"), ("pneumonia-cxr", "5.0.0")}
        assert all("sha256" in error for error in unavailable.values())
        assert any(
            p.startswith("pneumonia-cxr:5.1.0 is unavailable") and "sha256" in p
            for p in h["model_problems"]
        )
        metrics = c.get("/metrics").text
        assert 'clearscan_model_available{model="pneumonia-cxr",version="5.1.0"} 0.0' in metrics
        assert 'clearscan_model_available{model="pneumonia-cxr",version="1.0.0"} 1.0' in metrics


def test_health_degraded_by_a_rejected_package(tmp_path, settings):
    import json
    import shutil

    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from clearscan.registry.catalog import BUNDLED_DIR

    models = tmp_path / "models"
    shutil.copytree(BUNDLED_DIR / "pneumonia-cxr", models / "broken")
    (models / "broken" / "manifest.json").write_text(json.dumps({"name": "broken"}))
    with TestClient(create_app(settings.model_copy(update={"models_dir": models}))) as c:
        h = c.get("/api/v1/health", headers=login(c, "admin", ADMIN_PASSWORD)).json()
        assert h["status"] == "degraded" and h["unavailable_models"] == []
        assert len(h["model_problems"]) == 1 and "broken" in h["model_problems"][0]


def test_metrics_ood_batch_storage_and_audit(client, clinician_headers, admin_headers):
    from prometheus_client.parser import text_string_to_metric_families

    client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    names = {n for n, _ in samples}
    for name in (
        "clearscan_inference_batch_size_bucket",
        "clearscan_ood_checked_total",
        "clearscan_out_of_domain_total",
        "clearscan_storage_errors_total",
        "clearscan_jobs_finished_total",
    ):
        assert name in names, name
    assert samples[("clearscan_storage_writable", ())] == 1
    assert samples[("clearscan_storage_errors_total", (("source", "check"),))] == 0
    assert client.get("/api/v1/audit/verify", headers=admin_headers).json()["ok"]
    text = client.get("/metrics").text
    assert "clearscan_audit_chain_ok 1.0" in text
    assert "clearscan_audit_chain_verified_timestamp_seconds 0.0" not in text
