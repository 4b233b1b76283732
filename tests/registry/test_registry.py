"""Model packages: manifest validation names the field; a broken package never takes the server
down and is reported as unavailable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clearscan.registry.manifest import ManifestError, load_manifest
from clearscan.registry.service import BUNDLED_DIR, ModelNotFound, ModelRegistry, ModelUnavailable

BUNDLED = BUNDLED_DIR / "pneumonia-cxr"


def _copy(tmp: Path, name: str = "pkg") -> Path:
    dst = tmp / name
    shutil.copytree(BUNDLED, dst)
    return dst


def _edit(pkg: Path, **changes: object) -> None:
    m = json.loads((pkg / "manifest.json").read_text())
    m.update(changes)
    (pkg / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": "one"}, "version"),
        ({"labels": []}, "labels"),
        ({"runtime": "tensorflow"}, "runtime"),
        ({"input": {"channels": 2, "height": 28, "width": 28}}, "input.channels"),
        ({"files": {}}, "files"),
    ],
)
def test_manifest_errors_name_the_field(tmp_path, changes, field):
    pkg = _copy(tmp_path)
    _edit(pkg, **changes)
    with pytest.raises(ManifestError) as e:
        load_manifest(pkg)
    assert field.split(".")[0] in str(e.value)


def test_missing_field_named(tmp_path):
    pkg = _copy(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    del m["weights"]
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="weights"):
        load_manifest(pkg)


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
        health = c.get("/api/v1/health").json()
        broken = next(m for m in health["models"] if m["name"] == "broken-model")
        assert broken["available"] is False and broken["error"]


def test_published_json_schema_is_current():
    """docs/manifest.schema.json is the published schema; regenerate it when the manifest changes:
    python -c 'from tests.registry.test_registry import write_schema; write_schema()'"""
    published = json.loads(SCHEMA_PATH.read_text())
    assert published == current_schema()


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"


def current_schema() -> dict:
    from clearscan.registry.manifest import ModelManifest

    schema = ModelManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ClearScan model package manifest"
    return json.loads(json.dumps(schema, sort_keys=True))


def write_schema() -> None:
    SCHEMA_PATH.write_text(json.dumps(current_schema(), indent=2, sort_keys=True) + "\n")


def test_bundled_manifest_is_valid_and_schema_requires_core_fields():
    from clearscan.registry.manifest import ModelManifest

    ModelManifest.model_validate(json.loads((BUNDLED / "manifest.json").read_text()))
    schema = json.loads(SCHEMA_PATH.read_text())
    assert {"name", "version", "weights", "labels"} <= set(schema["required"])
    # an image model has `input`, a tabular model `features` (exactly one: checked at load)
    assert {"input", "features"} <= set(schema["properties"])


def test_manifest_needs_exactly_one_of_input_and_features(tmp_path):
    pkg = _copy(tmp_path)
    _edit(pkg, features=[{"name": "age"}])
    with pytest.raises(ManifestError, match="exactly one of input"):
        load_manifest(pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    del m["input"]
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="sklearn runtime"):
        load_manifest(pkg)
