"""The audited registry service on its own: publish (a training run's version), activate, roll
back and roll-out settings, each test in a transaction that is rolled back afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.audit.models import AuditEvent
from clearscan.registry import service
from clearscan.registry.catalog import BUNDLED_DIR
from clearscan.registry.errors import (
    ImportRejected,
    ModelNotFound,
    RolloutConflict,
    RolloutInvalid,
)
from clearscan.registry.models import ModelState
from clearscan.registry.ref import ModelRef
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.store import ModelStore

CTX = audit.RequestContext(actor="tester")
BUNDLED = BUNDLED_DIR / "pneumonia-cxr"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def registry(db: Session, store: ModelStore) -> ModelRegistry:
    sessions = sessionmaker(
        bind=db.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    reg = ModelRegistry([BUNDLED_DIR, store.root], sessions=sessions)
    reg.load_all()
    return reg


def _package(tmp_path: Path, ref: ModelRef) -> Path:
    pkg = tmp_path / "build" / str(ref).replace(":", "-")
    shutil.copytree(BUNDLED, pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m.update(name=ref.name, version=ref.version)
    (pkg / "manifest.json").write_text(json.dumps(m))
    return pkg


def _events(db: Session, action: Action) -> list[AuditEvent]:
    rows = db.execute(select(AuditEvent).where(AuditEvent.action == action))
    return list(rows.scalars())


def test_publish_a_trained_version_that_waits_for_activation(db, store, registry, tmp_path):
    ref = service.next_ref(store=store, name="trained")
    assert ref == ModelRef("trained", "1.0.0")
    manifest = service.publish(
        db=db,
        ctx=CTX,
        store=store,
        ref=ref,
        package=_package(tmp_path, ref),
        details={"job": "j1"},
    )
    assert ModelRef.of(manifest) == ref
    state = db.get(ModelState, "trained")
    assert state is not None and state.active_version == "" and state.updated_by == "tester"
    (event,) = _events(db, Action.MODEL_IMPORT)
    assert event.object_id == "trained:1.0.0" and event.details["job"] == "j1"
    registry.discover()
    with pytest.raises(RolloutConflict, match="no active version"):
        registry.get("trained")
    assert registry.describe("trained").manifest.version == "1.0.0"
    # the next run gets the next version; the name keeps serving nothing until activated
    assert service.next_ref(store=store, name="trained") == ModelRef("trained", "1.1.0")
    entry = service.activate(db=db, ctx=CTX, registry=registry, name="trained", version="1.0.0")
    assert entry.ref == ref and registry.status(entry) == "active"


def test_next_ref_counts_bundled_versions(store):
    assert service.next_ref(store=store, name="pneumonia-cxr") == ModelRef("pneumonia-cxr", "1.1.0")


def test_publish_refuses_a_package_that_is_not_the_planned_version(db, store, tmp_path):
    pkg = _package(tmp_path, ModelRef("trained", "2.0.0"))
    with pytest.raises(ImportRejected, match=r"trained:2\.0\.0, not trained:1\.0\.0"):
        service.publish(db=db, ctx=CTX, store=store, ref=ModelRef("trained", "1.0.0"), package=pkg)
    assert db.get(ModelState, "trained") is None and store.versions("trained") == []


def test_publish_keeps_what_serves_for_a_known_name(db, store, registry, tmp_path):
    ref = ModelRef("pneumonia-cxr", "1.1.0")
    service.publish(db=db, ctx=CTX, store=store, ref=ref, package=_package(tmp_path, ref))
    registry.discover()
    registry.apply_committed()
    assert registry.get("pneumonia-cxr").manifest.version == "1.0.0"
    assert registry.status(registry.version("pneumonia-cxr", "1.1.0")) == "inactive"


def test_activate_and_roll_back(db, store, registry, tmp_path):
    for version in ("1.1.0", "1.2.0"):
        ref = ModelRef("pneumonia-cxr", version)
        service.publish(db=db, ctx=CTX, store=store, ref=ref, package=_package(tmp_path, ref))
    registry.discover()
    for version in ("1.1.0", "1.2.0"):
        service.activate(db=db, ctx=CTX, registry=registry, name="pneumonia-cxr", version=version)
    state = db.get(ModelState, "pneumonia-cxr")
    assert state is not None and state.history == ["1.0.0", "1.1.0"]
    assert service.rollback(db=db, ctx=CTX, registry=registry, name="pneumonia-cxr") == (
        "1.2.0",
        "1.1.0",
    )
    assert registry.get("pneumonia-cxr").manifest.version == "1.1.0"
    service.rollback(db=db, ctx=CTX, registry=registry, name="pneumonia-cxr")
    with pytest.raises(RolloutConflict, match="no earlier version"):
        service.rollback(db=db, ctx=CTX, registry=registry, name="pneumonia-cxr")
    assert [e.details["previous"] for e in _events(db, Action.MODEL_ACTIVATE)] == [
        "1.0.0",
        "1.1.0",
    ]
    with pytest.raises(ModelNotFound):
        service.activate(db=db, ctx=CTX, registry=registry, name="pneumonia-cxr", version="9.0.0")


def test_a_version_that_cannot_load_is_not_activated(db, store, registry, tmp_path):
    ref = ModelRef("pneumonia-cxr", "1.1.0")
    service.publish(db=db, ctx=CTX, store=store, ref=ref, package=_package(tmp_path, ref))
    weights = store.version_dir(ref.name, ref.version) / "model.onnx"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(RolloutConflict, match="sha256"):
        service.activate(db=db, ctx=CTX, registry=registry, name=ref.name, version=ref.version)
    assert registry.get("pneumonia-cxr").manifest.version == "1.0.0"
    assert _events(db, Action.MODEL_ACTIVATE) == []


def test_rollout_settings_are_checked(db, store, registry, tmp_path):
    ref = ModelRef("pneumonia-cxr", "1.1.0")
    service.publish(db=db, ctx=CTX, store=store, ref=ref, package=_package(tmp_path, ref))
    args = {"db": db, "ctx": CTX, "registry": registry, "name": "pneumonia-cxr"}
    with pytest.raises(RolloutConflict, match="already the active version"):
        service.set_rollout(**args, canary=("1.0.0", 10), shadow=None)
    with pytest.raises(RolloutInvalid, match="between 0 and 100"):
        service.set_rollout(**args, canary=("1.1.0", 101), shadow=None)
    with pytest.raises(ModelNotFound):
        service.set_rollout(**args, canary=None, shadow="7.0.0")
    plan = service.set_rollout(**args, canary=("1.1.0", 25), shadow="1.1.0")
    assert plan["canary"] == {"version": "1.1.0", "percent": 25}
    assert plan["shadow"] == {"version": "1.1.0"}
    assert service.set_rollout(**args, canary=None, shadow=None)["canary"] is None
