"""Registry changes, shared by the API, the web pages, the CLI and training runs: import,
publish (a trained version), activate, roll back, remove, canary and shadow settings. Each is
audited in the same transaction as the state change it makes, and these functions are the only
place that commits registry state; the shadow report reads what shadow runs recorded."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.inference.manifest import ManifestError, ModelManifest, load_manifest
from clearscan.registry.catalog import ModelEntry, bundled_versions
from clearscan.registry.errors import ImportRejected, ModelNotFound, RolloutConflict, RolloutInvalid
from clearscan.registry.models import ModelState, ShadowResult
from clearscan.registry.packaging import OnnxFlags
from clearscan.registry.ref import ModelRef
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.store import ModelStore

__all__ = [
    "ShadowComparison",
    "activate",
    "import_path",
    "import_upload",
    "last_shadow_version",
    "next_ref",
    "publish",
    "record_shadow",
    "remove",
    "rollback",
    "set_rollout",
    "shadow_report",
]

HISTORY_KEPT = 20  # previously active versions remembered for rollback


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
    """Import a package folder, package .zip or bare model file as a new version (the first
    version of a new name serves at once; later ones wait for activation)."""
    try:
        manifest = store.import_package(source, flags=flags)
    except ImportRejected as exc:
        audit.record(
            audit.Entry(
                Action.MODEL_IMPORT, outcome="rejected", details={"reason": str(exc)[:500]}
            ),
            db=db,
            ctx=ctx,
        )
        raise
    registry.discover()
    registry.load_version(manifest.name, manifest.version)
    audit.record(
        audit.Entry(
            Action.MODEL_IMPORT,
            object_type="model",
            object_id=manifest.ref,
            details={"files": manifest.files},
        ),
        db=db,
        ctx=ctx,
    )
    return manifest


def next_ref(*, store: ModelStore, name: str) -> ModelRef:
    """The ref a new version of `name` gets: after every version of it in the store and among
    the bundled models (the next minor; 1.0.0 for a new name)."""
    return ModelRef.next(name, [*store.versions(name), *bundled_versions(name)])


def publish(
    *,
    db: Session,
    ctx: audit.RequestContext,
    store: ModelStore,
    ref: ModelRef,
    package: Path,
    details: dict[str, object] | None = None,
) -> ModelManifest:
    """Import the package built for `ref` (a training run's) as a new version that does not
    serve on its own: a name seen for the first time gets roll-out state with no active version
    (an admin activates one) before its version appears in the store. Audited as a model
    import; `details` (e.g. the job id) go into the event."""
    try:
        planned = load_manifest(package)
    except ManifestError:
        planned = None  # the import names the problem
    if planned is not None and ModelRef.of(planned) != ref:
        raise ImportRejected(f"the package is {planned.ref}, not {ref}")
    if db.get(ModelState, ref.name) is None:
        db.add(
            ModelState(
                name=ref.name,
                active_version="",
                history=[],
                canary_percent=0,
                updated_by=ctx.actor,
            )
        )
        db.commit()
    manifest = store.import_package(package)
    audit.record(
        audit.Entry(
            Action.MODEL_IMPORT,
            object_type="model",
            object_id=manifest.ref,
            details={"files": manifest.files, **(details or {})},
        ),
        db=db,
        ctx=ctx,
    )
    return manifest


def _state_row(db: Session, registry: ModelRegistry, name: str) -> ModelState:
    """The roll-out row of `name`, locked for the change; created from what serves now when the
    name has none yet."""
    row = db.get(ModelState, name, with_for_update=True)
    if row is None:
        current = registry.get(name).manifest.version
        row = ModelState(name=name, active_version=current, history=[], canary_percent=0)
        db.add(row)
    return row


def activate(
    *, db: Session, ctx: audit.RequestContext, registry: ModelRegistry, name: str, version: str
) -> ModelEntry:
    """Make `version` serve `name`; the previous one is kept for rollback. The version is loaded
    first: one that cannot load is refused (409) and nothing changes."""
    try:
        previous: str | None = registry.get(name).manifest.version
    except RolloutConflict:  # no active version yet (a freshly trained model)
        previous = None
    entry = registry.load_version(name, version)
    if entry.error is not None:
        raise RolloutConflict(f"{name}:{version} cannot be activated: {entry.error}")
    row = _state_row(db, registry, name)
    if row.active_version != version:
        earlier = [row.active_version] if row.active_version else []
        row.history = [*[v for v in row.history if v != version], *earlier][-HISTORY_KEPT:]
        row.active_version = version
    if row.canary_version == version:
        row.canary_version, row.canary_percent = None, 0
    row.updated_at, row.updated_by = datetime.now(UTC), ctx.actor
    db.flush()
    audit.append(
        audit.Entry(
            Action.MODEL_ACTIVATE,
            object_type="model",
            object_id=f"{name}:{version}",
            details={"previous": previous},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    registry.apply_committed()
    return registry.get(name)


def rollback(
    *, db: Session, ctx: audit.RequestContext, registry: ModelRegistry, name: str
) -> tuple[str, str]:
    """Re-activate the previously active version that still loads. Returns (from, to)."""
    row = _state_row(db, registry, name)
    history = list(row.history)
    while history:
        candidate = history.pop()
        try:
            entry = registry.load_version(name, candidate)
        except ModelNotFound:
            continue
        if entry.error is None:
            break
    else:
        raise RolloutConflict(f"model {name!r} has no earlier version to roll back to")
    old = row.active_version
    row.history, row.active_version = history, candidate
    row.updated_at, row.updated_by = datetime.now(UTC), ctx.actor
    db.flush()
    audit.append(
        audit.Entry(
            Action.MODEL_ROLLBACK,
            object_type="model",
            object_id=f"{name}:{candidate}",
            details={"from": old},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    registry.apply_committed()
    return old, candidate


def remove(
    *,
    db: Session,
    ctx: audit.RequestContext,
    store: ModelStore,
    registry: ModelRegistry,
    name: str,
    version: str,
) -> None:
    """Remove an imported version that does not serve (bundled versions stay)."""
    entry = registry.version(name, version)
    if registry.is_active(name, version):
        raise RolloutConflict(f"{name}:{version} is the active version; activate another first")
    if entry.source != "store":
        raise RolloutConflict(f"{name}:{version} is bundled with ClearScan and cannot be removed")
    store.remove(name, version)
    registry.forget(name, version)
    audit.record(
        audit.Entry(Action.MODEL_REMOVE, object_type="model", object_id=f"{name}:{version}"),
        db=db,
        ctx=ctx,
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
    """Replace the canary (version, percent of cases) and shadow settings of `name` (None
    clears one). Each must be another version of the name that loads."""
    active = registry.get(name).manifest.version
    for role, version in (("canary", canary[0] if canary else None), ("shadow", shadow)):
        if version is None:
            continue
        if version == active:
            raise RolloutConflict(f"{role} version {version} is already the active version")
        entry = registry.load_version(name, version)  # ModelNotFound -> 404
        if entry.error is not None:
            raise RolloutConflict(f"{role} version {name}:{version} cannot load: {entry.error}")
    if canary is not None and not 0 <= canary[1] <= 100:
        raise RolloutInvalid("canary.percent must be between 0 and 100")
    row = _state_row(db, registry, name)
    row.canary_version, row.canary_percent = (canary[0], canary[1]) if canary else (None, 0)
    row.shadow_version = shadow
    row.updated_at, row.updated_by = datetime.now(UTC), ctx.actor
    db.flush()
    audit.append(
        audit.Entry(
            Action.MODEL_ROLLOUT,
            object_type="model",
            object_id=name,
            details={"canary": list(canary) if canary else None, "shadow": shadow},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    registry.apply_committed()
    return registry.rollout(name)


@dataclass(frozen=True)
class ShadowComparison:
    """One prediction answered by the served version, and what the shadow version said."""

    prediction_id: str
    served_label: str
    shadow_label: str
    served_ms: float
    shadow_ms: float


def record_shadow(
    *,
    db: Session,
    name: str,
    served_version: str,
    shadow_version: str,
    comparisons: Sequence[ShadowComparison],
    before_commit: Callable[[Session], None] | None = None,
) -> None:
    """Store a shadow run's comparisons (read back by :func:`shadow_report`); `before_commit`
    joins the same transaction (a shadow job records its end with them)."""
    db.add_all(
        ShadowResult(
            model_name=name,
            served_version=served_version,
            shadow_version=shadow_version,
            prediction_id=c.prediction_id,
            served_label=c.served_label,
            shadow_label=c.shadow_label,
            served_ms=c.served_ms,
            shadow_ms=c.shadow_ms,
        )
        for c in comparisons
    )
    if before_commit is not None:
        before_commit(db)
    db.commit()


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


def last_shadow_version(*, db: Session, name: str) -> str | None:
    """The shadow version of `name` that most recently recorded a comparison, if any."""
    return db.execute(
        select(ShadowResult.shadow_version)
        .where(ShadowResult.model_name == name)
        .order_by(ShadowResult.id.desc())
        .limit(1)
    ).scalar_one_or_none()
