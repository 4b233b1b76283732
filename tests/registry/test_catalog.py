"""The catalogue and routing of loaded packages: a broken package never takes the server down and
is reported as unavailable; lookups by name and version, highest version first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clearscan.registry.cache import ModelCache
from clearscan.registry.catalog import BUNDLED_DIR, Catalog, bundled_versions, package_dirs
from clearscan.registry.errors import ModelNotFound, ModelUnavailable
from clearscan.registry.routing import ModelRegistry
from tests.conftest import ADMIN_PASSWORD, login

BUNDLED = BUNDLED_DIR / "pneumonia-cxr"


def _copy(tmp: Path, name: str = "pkg") -> Path:
    dst = tmp / name
    shutil.copytree(BUNDLED, dst)
    return dst


def _edit(pkg: Path, **changes: object) -> None:
    m = json.loads((pkg / "manifest.json").read_text())
    m.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(m))


def _registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry([tmp_path])
    reg.load_all()
    return reg


def test_corrupt_weights_marked_unavailable_others_unaffected(tmp_path):
    good = _copy(tmp_path, "good")
    _edit(good, name="good-model")
    bad = _copy(tmp_path, "bad")
    _edit(bad, name="bad-model")
    raw = bytearray((bad / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(raw))
    reg = _registry(tmp_path)
    assert reg.status(reg.get("good-model")) == "active"
    entry = reg.get("bad-model")
    assert reg.status(entry) == "unavailable" and "sha256" in (entry.error or "")
    with pytest.raises(ModelUnavailable), reg.serve("bad-model", "case-1"):
        pass
    with pytest.raises(ModelNotFound):
        reg.get("nope")


def test_truncated_onnx_with_matching_hash_is_unavailable(tmp_path):
    import hashlib

    pkg = _copy(tmp_path)
    data = (pkg / "model.onnx").read_bytes()[:1000]
    (pkg / "model.onnx").write_bytes(data)
    m = json.loads((pkg / "manifest.json").read_text())
    m["files"]["model.onnx"] = hashlib.sha256(data).hexdigest()
    (pkg / "manifest.json").write_text(json.dumps(m))
    reg = _registry(tmp_path)
    entry = reg.get("pneumonia-cxr")
    assert reg.status(entry) == "unavailable" and "ONNX" in (entry.error or "")


def test_input_shape_contradicting_manifest_is_unavailable(tmp_path):
    pkg = _copy(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    m["input"]["height"] = m["input"]["width"] = 64
    (pkg / "manifest.json").write_text(json.dumps(m))
    reg = _registry(tmp_path)
    entry = reg.get("pneumonia-cxr")
    assert reg.status(entry) == "unavailable" and "contradicts" in (entry.error or "")


def test_labels_not_matching_outputs_is_unavailable(tmp_path):
    pkg = _copy(tmp_path)
    _edit(pkg, labels=["a", "b", "c"], threshold=None)
    reg = _registry(tmp_path)
    entry = reg.get("pneumonia-cxr")
    assert reg.status(entry) == "unavailable" and "labels" in (entry.error or "")


def test_invalid_manifest_is_reported_not_fatal(tmp_path):
    pkg = _copy(tmp_path)
    (pkg / "manifest.json").write_text("{not json")
    reg = _registry(tmp_path)
    assert reg.entries() == [] and "not valid JSON" in reg.problems[0]


def test_server_starts_and_reports_broken_model(tmp_path, settings):
    from fastapi.testclient import TestClient

    from clearscan.app import create_app

    models = tmp_path / "models"
    pkg = _copy(models, "broken")
    _edit(pkg, name="broken-model")
    (pkg / "model.onnx").write_bytes(b"garbage")
    s = settings.model_copy(update={"models_dir": models})
    with TestClient(create_app(s)) as c:
        assert c.get("/readyz").status_code == 200
        headers = login(c, "admin", ADMIN_PASSWORD)
        health = c.get("/api/v1/health", headers=headers).json()
        broken = next(m for m in health["models"] if m["name"] == "broken-model")
        assert broken["available"] is False and broken["error"]


def _versions(tmp_path: Path, versions: list[str], name: str = "m") -> Path:
    root = tmp_path / "store"
    for v in versions:
        pkg = _copy(root / name, v)
        _edit(pkg, name=name, version=v)
    return root


def test_catalog_lookup_orders_versions_by_precedence(tmp_path):
    root = _versions(tmp_path, ["1.0.0", "1.10.0", "1.9.0", "2.0.0-rc.1", "1.0.0-alpha"])
    catalog = Catalog([root], cache=ModelCache())
    catalog.scan()
    assert catalog.names() == ["m"]
    order = [e.manifest.version for e in catalog.versions("m")]
    assert order == ["2.0.0-rc.1", "1.10.0", "1.9.0", "1.0.0", "1.0.0-alpha"]
    highest = catalog.highest("m")
    assert highest is not None and str(highest.ref) == "m:2.0.0-rc.1"
    assert catalog.version("m", "1.9.0").source == "store"
    assert catalog.find("m", "3.0.0") is None and catalog.highest("nope") is None
    with pytest.raises(ModelNotFound, match="nope"):
        catalog.versions("nope")
    with pytest.raises(ModelNotFound, match=r"m:3\.0\.0"):
        catalog.version("m", "3.0.0")
    assert catalog.unavailable() == []  # nothing was loaded yet, nothing failed
    assert [p.parent.name for p in package_dirs(root)] == ["m"] * 5


def test_catalog_finds_versions_imported_since_the_scan(tmp_path):
    root = _versions(tmp_path, ["1.0.0"])
    catalog = Catalog([root], cache=ModelCache())
    catalog.scan()
    pkg = _copy(root / "m", "1.1.0")
    _edit(pkg, name="m", version="1.1.0")
    assert catalog.find("m", "1.1.0") is None
    assert catalog.version("m", "1.1.0").manifest.version == "1.1.0"  # looked on disk again
    catalog.forget("m", "1.1.0")
    catalog.forget("m", "1.0.0")
    assert catalog.names() == []


def test_unavailable_lists_every_version_that_failed_to_load(tmp_path):
    root = _versions(tmp_path, ["1.0.0", "1.1.0"])
    weights = root / "m" / "1.1.0" / "model.onnx"
    weights.write_bytes(weights.read_bytes()[:-1])
    reg = ModelRegistry([root])
    reg.load_all()
    assert reg.get("m").manifest.version == "1.0.0"  # the last good version serves
    (bad,) = reg.unavailable()
    assert str(bad.ref) == "m:1.1.0" and "sha256" in (bad.error or "")
    assert reg.status(bad) == "unavailable"


def test_bundled_versions():
    assert bundled_versions("pneumonia-cxr") == ["1.0.0"]
    assert bundled_versions("not-bundled") == []
