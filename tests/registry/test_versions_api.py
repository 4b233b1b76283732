"""Import, version, activate and roll back models through the API; the store is immutable and a
rejected import leaves nothing behind."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from clearscan.registry.catalog import BUNDLED_DIR
from tests.conftest import png_bytes

BUNDLED = BUNDLED_DIR / "pneumonia-cxr"


def package_zip(
    version: str = "1.1.0", *, edit=None, extra: dict[str, bytes] | None = None
) -> bytes:
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    manifest["version"] = version
    if edit:
        edit(manifest)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for f in json.loads((BUNDLED / "manifest.json").read_text())["files"]:
            zf.write(BUNDLED / f, f)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _import(client, headers, data: bytes, filename: str = "pkg.zip", **form):
    return client.post(
        "/api/v1/models",
        headers=headers,
        data=form,
        files={"file": (filename, data, "application/octet-stream")},
    )


def _store_root(app) -> Path:
    return app.state.clearscan.store.root


def _leftovers(app) -> list[str]:
    root = _store_root(app)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _predict_version(client, headers) -> str:
    r = client.post(
        "/api/v1/predict", headers=headers, files=[("file", ("x.png", png_bytes(), "image/png"))]
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["model"]["version"]


def test_import_activate_rollback(client, admin_headers, clinician_headers, app):
    r = _import(client, admin_headers, package_zip("1.1.0"))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "inactive" and r.json()["source"] == "store"
    versions = client.get("/api/v1/models/pneumonia-cxr/versions", headers=clinician_headers).json()
    assert [(v["version"], v["status"]) for v in versions["items"]] == [
        ("1.1.0", "inactive"),
        ("1.0.0", "active"),
    ]
    assert _predict_version(client, clinician_headers) == "1.0.0"

    r = client.post("/api/v1/models/pneumonia-cxr/versions/1.1.0/activate", headers=admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert _predict_version(client, clinician_headers) == "1.1.0"
    listed = client.get("/api/v1/models", headers=clinician_headers).json()["items"]
    assert listed[0]["version"] == "1.1.0"

    r = client.post("/api/v1/models/pneumonia-cxr/rollback", headers=admin_headers)
    assert r.status_code == 200
    assert r.json() == {
        "name": "pneumonia-cxr",
        "previous_version": "1.1.0",
        "active_version": "1.0.0",
    }
    assert _predict_version(client, clinician_headers) == "1.0.0"
    again = client.post("/api/v1/models/pneumonia-cxr/rollback", headers=admin_headers)
    assert again.status_code == 409

    actions = [
        e["action"]
        for e in client.get("/api/v1/audit?limit=200", headers=admin_headers).json()["items"]
    ]
    assert {"model.import", "model.activate", "model.rollback"} <= set(actions)


def test_versions_are_immutable(client, admin_headers, app):
    assert _import(client, admin_headers, package_zip("1.2.0")).status_code == 201
    r = _import(client, admin_headers, package_zip("1.2.0"))
    assert r.status_code == 409 and "immutable" in r.json()["detail"]
    files = list((_store_root(app) / "pneumonia-cxr" / "1.2.0").iterdir())
    assert files and all(not (f.stat().st_mode & 0o222) for f in files)  # read-only


def test_state_survives_restart(settings, client, admin_headers):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from tests.conftest import ADMIN_PASSWORD, login

    _import(client, admin_headers, package_zip("2.0.0"))
    client.post("/api/v1/models/pneumonia-cxr/versions/2.0.0/activate", headers=admin_headers)
    with TestClient(create_app(settings)) as c2:
        h = login(c2, "admin", ADMIN_PASSWORD)
        assert c2.get("/api/v1/models/pneumonia-cxr", headers=h).json()["version"] == "2.0.0"


def _bad_sha(m):
    m["files"]["model.onnx"] = "0" * 64


def _bad_labels(m):
    m["labels"] = ["a", "b", "c"]
    m["threshold"] = None


def _missing_field(m):
    del m["weights"]


def _wrong_type(m):
    m["input"]["height"] = "tall"


def _unknown_runtime(m):
    m["runtime"] = "tensorflow"


def _bad_shape(m):
    m["input"]["height"] = m["input"]["width"] = 64


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_bad_sha, "sha256"),
        (_bad_labels, "labels"),
        (_missing_field, "weights"),
        (_wrong_type, "input.height"),
        (_unknown_runtime, "runtime"),
        (_bad_shape, "contradicts"),
    ],
)
def test_manifest_errors_store_nothing(client, admin_headers, app, edit, words):
    r = _import(client, admin_headers, package_zip("3.0.0", edit=edit))
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert not [n for n in _leftovers(app) if n != "pneumonia-cxr"]
    assert not (_store_root(app) / "pneumonia-cxr" / "3.0.0").exists()


def test_zip_slip_and_symlink_refused(client, admin_headers, app):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    r = _import(client, admin_headers, buf.getvalue())
    assert r.status_code == 422 and "outside" in r.json()["detail"]
    assert not (app.state.clearscan.settings.data_dir / "evil.txt").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    r = _import(client, admin_headers, buf.getvalue())
    assert r.status_code == 422 and "symbolic link" in r.json()["detail"]


def test_zip_bomb_refused(client, admin_headers, settings):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from tests.conftest import ADMIN_PASSWORD, login

    small = settings.model_copy(update={"max_model_upload_mb": 1})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", b"\0" * (5 * 2**20))  # 5 MB of zeros, a few KB compressed
    with TestClient(create_app(small)) as c:
        r = _import(c, login(c, "admin", ADMIN_PASSWORD), buf.getvalue())
        assert r.status_code == 422 and "zip bomb" in r.json()["detail"]


def test_pickle_refused(client, admin_headers):
    import pickle

    payload = pickle.dumps({"weights": [1, 2, 3]}, protocol=4)
    r = _import(client, admin_headers, payload, filename="model.zip")
    assert r.status_code == 422 and "pickle" in r.json()["detail"]
    r = _import(client, admin_headers, package_zip("4.0.0", extra={"extra.pkl": payload}))
    assert r.status_code == 422 and "pickle" in r.json()["detail"]


@pytest.mark.parametrize("protocol", [0, 1])
def test_headerless_pickle_under_an_innocent_name_refused(client, admin_headers, protocol):
    """Protocols 0 and 1 have no PROTO header; the opcode parse still finds them, bare or
    listed (with a correct sha256) inside a package, and nothing is stored."""
    import collections
    import hashlib
    import pickle

    payload = pickle.dumps(collections.OrderedDict(w=list(range(3000))), protocol=protocol)
    assert payload[:1] != b"\x80"
    before = client.get("/api/v1/models/pneumonia-cxr/versions", headers=admin_headers).json()
    r = _import(client, admin_headers, payload, filename="model.onnx", labels="a,b")
    assert r.status_code == 422 and "pickle" in r.json()["detail"]

    def add(m):
        m["files"]["calibration.bin"] = hashlib.sha256(payload).hexdigest()

    pkg = package_zip("4.1.0", edit=add, extra={"calibration.bin": payload})
    r = _import(client, admin_headers, pkg)
    assert r.status_code == 422, r.text
    assert "calibration.bin" in r.json()["detail"] and "pickle" in r.json()["detail"]
    after = client.get("/api/v1/models/pneumonia-cxr/versions", headers=admin_headers).json()
    assert after == before


def test_truncated_onnx_refused(client, admin_headers):
    data = (BUNDLED / "model.onnx").read_bytes()[:5000]
    r = _import(client, admin_headers, data, filename="m.onnx", labels="normal,pneumonia")
    assert r.status_code == 422 and "ONNX" in r.json()["detail"]


def test_bare_onnx_import_with_flags(client, admin_headers, clinician_headers):
    data = (BUNDLED / "model.onnx").read_bytes()
    r = _import(
        client,
        admin_headers,
        data,
        filename="whatever.onnx",
        name="cxr-bare",
        version="0.1.0",
        labels="normal,pneumonia",
        modality="XR",
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "cxr-bare" and r.json()["explainable"] is True
    r = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        data={"model": "cxr-bare"},
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    assert r.status_code == 200 and r.json()["predictions"][0]["model"]["name"] == "cxr-bare"
    missing = _import(client, admin_headers, data, filename="m.onnx", name="nolabels")
    assert missing.status_code == 422 and "labels" in missing.json()["detail"]


def test_activate_unknown_version_404(client, admin_headers):
    r = client.post("/api/v1/models/pneumonia-cxr/versions/9.9.9/activate", headers=admin_headers)
    assert r.status_code == 404
    r = client.post("/api/v1/models/nope/versions/1.0.0/activate", headers=admin_headers)
    assert r.status_code == 404


def test_corrupt_active_version_falls_back_to_last_good(client, admin_headers, settings):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from tests.conftest import ADMIN_PASSWORD, login

    _import(client, admin_headers, package_zip("5.0.0"))
    client.post("/api/v1/models/pneumonia-cxr/versions/5.0.0/activate", headers=admin_headers)
    weights = settings.data_dir / "models" / "pneumonia-cxr" / "5.0.0" / "model.onnx"
    weights.chmod(0o644)
    raw = bytearray(weights.read_bytes())
    raw[1000] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with TestClient(create_app(settings)) as c2:  # a restart: its model cache starts empty
        h = login(c2, "admin", ADMIN_PASSWORD)
        assert c2.get("/readyz").status_code == 200
        assert _predict_version(c2, h) == "1.0.0"  # last good version keeps serving
        health = c2.get("/api/v1/health", headers=h).json()
        assert health["models"][0]["version"] == "1.0.0"
        assert health["status"] == "degraded"
        assert [(m["name"], m["version"]) for m in health["unavailable_models"]] == [
            ("pneumonia-cxr", "5.0.0")
        ]
        vs = {
            v["version"]: v
            for v in c2.get("/api/v1/models/pneumonia-cxr/versions", headers=h).json()["items"]
        }
        assert vs["5.0.0"]["status"] == "unavailable" and "sha256" in vs["5.0.0"]["error"]
        events = c2.get("/api/v1/audit?action=model.unavailable", headers=h).json()["items"]
        assert events and events[0]["object_id"] == "pneumonia-cxr:5.0.0"


def test_concurrent_activate_and_predict_lose_nothing(client, admin_headers, clinician_headers):
    _import(client, admin_headers, package_zip("6.0.0"))
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def predictor() -> None:
        for _ in range(12):
            r = client.post(
                "/api/v1/predict",
                headers=clinician_headers,
                files=[("file", ("x.png", png_bytes(), "image/png"))],
            )
            results.append(
                (
                    r.status_code,
                    r.json()["predictions"][0]["model"]["version"]
                    if r.status_code == 200
                    else r.text,
                )
            )

    def toggler() -> None:
        flip = ["6.0.0", "1.0.0"]
        i = 0
        while not stop.is_set():
            client.post(
                f"/api/v1/models/pneumonia-cxr/versions/{flip[i % 2]}/activate",
                headers=admin_headers,
            )
            i += 1

    threads = [threading.Thread(target=predictor) for _ in range(3)]
    t = threading.Thread(target=toggler)
    t.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    t.join()
    assert len(results) == 36
    assert all(code == 200 for code, _ in results), results
    assert {v for _, v in results} <= {"1.0.0", "6.0.0"}


def test_export_roundtrip(tmp_path, app):
    store = app.state.clearscan.store
    out = store.export(BUNDLED, tmp_path / "x.zip")
    with zipfile.ZipFile(out) as zf:
        assert {"manifest.json", "model.onnx", "MODEL_CARD.md"} <= set(zf.namelist())
