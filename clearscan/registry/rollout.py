"""Registry changes shared by the API, the web pages and the CLI: import, activate, roll back,
remove, each audited in the same transaction as the state change."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.registry.manifest import ModelManifest
from clearscan.registry.models import ShadowResult
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
    try:
        previous: str | None = registry.get(name).manifest.version
    except RolloutConflict:  # no active version yet (a freshly trained model)
        previous = None
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


def set_rollout(
    *,
    db: Session,
    ctx: audit.RequestContext,
    registry: ModelRegistry,
    name: str,
    canary: tuple[str, int] | None,
    shadow: str | None,
) -> dict[str, object]:
    registry.set_rollout(db, name, canary=canary, shadow=shadow, actor=ctx.actor)
    audit.append(
        db,
        ctx,
        audit.Entry(
            "model.rollout",
            object_type="model",
            object_id=name,
            details={"canary": list(canary) if canary else None, "shadow": shadow},
        ),
    )
    db.commit()
    registry.apply_committed()
    return registry.rollout(name)


def shadow_report(
    *, db: Session, registry: ModelRegistry, name: str, version: str | None = None
) -> dict[str, object]:
    """Agreement between what was served and what the shadow version said, per label, with the
    confusion (rows: served label, columns: shadow label) and latencies."""
    state = registry.rollout(name)
    shadow = state.get("shadow")
    version = version or (shadow["version"] if isinstance(shadow, dict) else None)
    if version is None:
        raise RolloutConflict(f"model {name!r} has no shadow version; give ?version=")
    rows = (
        db.execute(
            select(ShadowResult).where(
                ShadowResult.model_name == name, ShadowResult.shadow_version == version
            )
        )
        .scalars()
        .all()
    )
    labels = list(registry.version(name, version).manifest.labels)
    for r in rows:
        for lab in (r.served_label, r.shadow_label):
            if lab not in labels:
                labels.append(lab)
    idx = {lab: i for i, lab in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for r in rows:
        confusion[idx[r.served_label]][idx[r.shadow_label]] += 1
    per_label = {}
    for lab in labels:
        served = sum(confusion[idx[lab]])
        per_label[lab] = {
            "served": served,
            "shadow": sum(row[idx[lab]] for row in confusion),
            "agreement": round(confusion[idx[lab]][idx[lab]] / served, 4) if served else None,
        }
    n = len(rows)
    agree = sum(confusion[i][i] for i in range(len(labels)))
    return {
        "name": name,
        "shadow_version": version,
        "served_versions": sorted({r.served_version for r in rows}),
        "n": n,
        "agreement": round(agree / n, 4) if n else None,
        "labels": labels,
        "confusion": confusion,
        "per_label": per_label,
        "latency_ms": {
            "served_p50": _median([r.served_ms for r in rows]),
            "shadow_p50": _median([r.shadow_ms for r in rows]),
        },
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None
