"""Model package manifests: validation names the field; the published JSON schema is current;
names and versions follow clearscan.registry.ref."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clearscan.inference.manifest import ManifestError, load_manifest
from clearscan.registry.catalog import BUNDLED_DIR

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


def test_published_json_schema_is_current():
    """docs/manifest.schema.json is the published schema; regenerate it when the manifest changes:
    python -c 'from tests.registry.test_manifest import write_schema; write_schema()'"""
    published = json.loads(SCHEMA_PATH.read_text())
    assert published == current_schema()


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"


def current_schema() -> dict:
    from clearscan.inference.manifest import ModelManifest

    schema = ModelManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ClearScan model package manifest"
    return json.loads(json.dumps(schema, sort_keys=True))


def write_schema() -> None:
    SCHEMA_PATH.write_text(json.dumps(current_schema(), indent=2, sort_keys=True) + "\n")


def test_bundled_manifest_is_valid_and_schema_requires_core_fields():
    from clearscan.inference.manifest import ModelManifest

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


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Upper-Case"}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"version": "1.0"}, "version"),
        ({"version": "01.0.0"}, "version"),
    ],
)
def test_manifest_names_and_versions_follow_the_ref_rules(tmp_path, changes, field):
    from clearscan.registry.ref import valid_name, valid_version

    pkg = _copy(tmp_path)
    _edit(pkg, **changes)
    with pytest.raises(ManifestError, match=field):
        load_manifest(pkg)
    value = changes[field]
    assert not (valid_name(value) if field == "name" else valid_version(value))
