"""Registry changes shared by the API, the web pages and the CLI: import, activate, roll back,
remove, each audited in the same transaction as the state change."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.registry.manifest import ModelManifest
from clearscan.registry.service import ModelEntry, ModelRegistry, RolloutConflict
from clearscan.registry.store import ImportRejected, ModelStore, OnnxFlags


def import_upload(
    *,
    db: Session,
    ctx: audit.RequestContext,
    store: ModelStore,
    registry: ModelRegistry,
    upload: BinaryIO,
    flags: OnnxFlags,
) -> ModelManifest:
    """Import an uploaded package (.zip) or bare .onnx. The client's file name is never used."""
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=store.root, prefix=".upload-", suffix=".bin") as tmp:
        shutil.copyfileobj(upload, tmp, length=1 << 20)
        tmp.flush()
        return import_path(
            db=db, ctx=ctx, store=store, registry=registry, source=Path(tmp.name), flags=flags
        )


def import_path(
    *,
    db: Session,
    ctx: audit.RequestContext,
    store: ModelStore,
    registry: ModelRegistry,
    source: Path,
    flags: OnnxFlags,
) -> ModelManifest:
    try:
        manifest = store.import_package(source, flags=flags)
    except ImportRejected as exc:
        audit.record(
            db,
            ctx,
            audit.Entry("model.import", outcome="rejected", details={"reason": str(exc)[:500]}),
        )
        raise
    registry.discover()
    registry.load_version(manifest.name, manifest.version)
    audit.record(
        db,
        ctx,
        audit.Entry(
            "model.import",
            object_type="model",
            object_id=manifest.ref,
            details={"files": manifest.files},
        ),
    )
    return manifest


def activate(
    *, db: Session, ctx: audit.RequestContext, registry: ModelRegistry, name: str, version: str
) -> ModelEntry:
    previous = registry.get(name).manifest.version
    registry.activate(db, name, version, actor=ctx.actor)
    audit.append(
        db,
        ctx,
        audit.Entry(
            "model.activate",
            object_type="model",
            object_id=f"{name}:{version}",
            details={"previous": previous},
        ),
    )
    db.commit()
    registry.apply_committed()
    return registry.get(name)


def rollback(
    *, db: Session, ctx: audit.RequestContext, registry: ModelRegistry, name: str
) -> tuple[str, str]:
    old, new = registry.rollback(db, name, actor=ctx.actor)
    audit.append(
        db,
        ctx,
        audit.Entry(
            "model.rollback", object_type="model", object_id=f"{name}:{new}", details={"from": old}
        ),
    )
    db.commit()
    registry.apply_committed()
    return old, new


def remove(
    *,
    db: Session,
    ctx: audit.RequestContext,
    store: ModelStore,
    registry: ModelRegistry,
    name: str,
    version: str,
) -> None:
    entry = registry.version(name, version)
    if registry.is_active(name, version):
        raise RolloutConflict(f"{name}:{version} is the active version; activate another first")
    if entry.source != "store":
        raise RolloutConflict(f"{name}:{version} is bundled with ClearScan and cannot be removed")
    store.remove(name, version)
    registry.forget(name, version)
    audit.record(
        db, ctx, audit.Entry("model.remove", object_type="model", object_id=f"{name}:{version}")
    )
