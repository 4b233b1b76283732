"""Batches: submit (a ZIP archive of images, or images already stored in cases), list, read and
cancel. Keyword-only functions that take the session, raise ClearScanError subclasses and commit
what they change; the API's routes and the web's pages both call them.

A batch is accepted whole or not at all: an archive's images are staged first (raw uploads, kept
in the blob store's staging area only until analysed, and discarded when the batch is refused),
then the job row, every item row and the audit event are written in one transaction. An
idempotency key names one batch: the same key again returns that batch."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple

from sqlalchemy import case, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearscan import errors
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth.models import Role, User
from clearscan.batches.archive import MAX_ITEMS, ArchiveLimits, read_archive
from clearscan.batches.models import BATCH_KIND, BatchItem
from clearscan.batches.schemas import BatchDetail, BatchItemPublic, BatchProgress, BatchPublic
from clearscan.cases.models import Case, Image, Prediction
from clearscan.inference.tasks import TaskKind, task_kind
from clearscan.jobs import service as jobs
from clearscan.jobs.delivery import JobQueue, commit_and_deliver
from clearscan.jobs.models import Job
from clearscan.registry.errors import ModelUnavailable
from clearscan.registry.ref import valid_name, valid_version
from clearscan.registry.routing import ModelRegistry
from clearscan.storage import BlobError, BlobStore
from clearscan.teams import service as teams
from clearscan.teams.service import Scope

__all__ = [
    "BATCH_KIND",
    "BatchConflict",
    "BatchForbidden",
    "BatchNotFound",
    "BatchRefused",
    "Batches",
    "NewItem",
    "Submitted",
    "cancel_batch",
    "detail",
    "get_batch",
    "list_batches",
    "resolve_model",
    "submit_archive",
    "submit_images",
    "summaries",
]

log = logging.getLogger(__name__)
Source = Literal["archive", "images"]
_CHUNK_BYTES = 32 << 20  # blobs are written in groups of about this size, one sync per group


class BatchNotFound(errors.NotFound):
    """No batch of this id (404)."""


class BatchRefused(errors.Unprocessable):
    """The batch cannot be accepted as asked (422); the message names the problem."""


class BatchConflict(errors.Conflict):
    """The idempotency key names another request, or the batch already ended (409)."""


class BatchForbidden(errors.Forbidden):
    """The user may not do this to this batch (403)."""


@dataclass(frozen=True)
class NewItem:
    digest: str  # sha256 of the image's bytes
    staged: str | None = None  # staging key (an archive's image)
    name: str | None = None
    source_image_id: str | None = None  # the stored image (its blob is `digest`)


class Submitted(NamedTuple):
    """The batch, and whether this request created it (False: an earlier request with the same
    idempotency key did)."""

    job: Job
    created: bool


class Batches(NamedTuple):
    items: list[Job]
    total: int


def discard_staged(blobs: BlobStore, keys: Iterable[str]) -> None:
    """Delete staged inputs; a store that fails to is logged (the staging sweep retries)."""
    for key in keys:
        try:
            blobs.discard_staged(key)
        except BlobError as exc:
            log.warning("staged input not discarded (the sweep will retry): %s", exc.detail)


# --- submitting ---------------------------------------------------------------------------------


def resolve_model(
    *, registry: ModelRegistry, model: str | None, default_model: str, user: User
) -> str:
    """The model a batch runs, as its parameters keep it: NAME (each image goes to the version
    serving NAME when it is analysed, canary share included, as predict does) or NAME:VERSION
    (that version for every image). Refused: an unknown name or version (404), a name with no
    active version (409), a model that does not take images (422), and a version that serves
    nothing (neither active nor the canary) unless the user is an administrator (403)."""
    ref = (model or default_model).strip()
    name, sep, version = ref.partition(":")
    if not valid_name(name) or (sep and not valid_version(version)):
        raise BatchRefused(f"model {ref!r} is not NAME or NAME:VERSION")
    entry = registry.version(name, version) if sep else registry.get(name)
    if entry.error is not None:
        raise ModelUnavailable(f"model {entry.manifest.ref} is unavailable: {entry.error}")
    if task_kind(entry.manifest) is TaskKind.TABULAR_CLASSIFICATION:
        raise BatchRefused(f"model {entry.manifest.ref} takes feature values, not images")
    if sep and user.role != Role.admin.value:
        serving = {registry.get(name).manifest.version}
        state = registry.state_of(name)
        if state is not None and state.canary_version:
            serving.add(state.canary_version)
        if version not in serving:
            raise BatchForbidden(
                f"version {version} of {name} serves no predictions; only an administrator "
                "may run it on a batch"
            )
    return f"{name}:{version}" if sep else name


def _by_key(*, db: Session, key: str, user: User) -> Job | None:
    """The batch an earlier request of `user` made under `key` (409 for another's key)."""
    return jobs.earlier_submission(db=db, key=key, kind=BATCH_KIND, user_id=user.id)


def submit(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    model: str,
    explain: bool,
    source: Source,
    items: Sequence[NewItem],
    queue: JobQueue | None,
    idempotency_key: str | None = None,
    via: str | None = None,
    team_id: int,
) -> Submitted:
    """Write the batch (of team `team_id`, which its cases will belong to): its job row, every
    item and the audit event in one transaction, commit and deliver it to `queue`
    (QueueUnavailable, 503, and nothing written when the queue cannot take it). `model` is what
    :func:`resolve_model` returned; the items' bytes are stored or staged."""
    if not items:
        raise BatchRefused("a batch needs at least one image")
    if len(items) > MAX_ITEMS:
        raise errors.TooLarge(f"a batch holds at most {MAX_ITEMS:,} images")
    params: dict[str, Any] = {
        "model": model,
        "explain": explain,
        "source": source,
        "items": len(items),
        "user_id": user.id,
    }
    details = {k: v for k, v in params.items() if k != "user_id"}
    if via:
        details["via"] = via
    try:
        job = jobs.submit_audited(
            db=db,
            ctx=ctx,
            kind=BATCH_KIND,
            action=Action.BATCH_SUBMIT,
            params=params,
            details=details,
            idempotency_key=idempotency_key,
        )
        job.team_id = team_id
        db.execute(
            insert(BatchItem),
            [
                {
                    "batch_id": job.id,
                    "idx": i,
                    "digest": it.digest,
                    "staged": it.staged,
                    "name": it.name,
                    "source_image_id": it.source_image_id,
                    "status": "queued",
                }
                for i, it in enumerate(items)
            ],
        )
        commit_and_deliver(db=db, queue=queue, jobs=[job])
    except IntegrityError:
        # another request with the same key committed first: that one is the batch
        db.rollback()
        earlier = _by_key(db=db, key=idempotency_key, user=user) if idempotency_key else None
        if earlier is None:
            raise
        return Submitted(earlier, False)
    return Submitted(job, True)


def submit_archive(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    registry: ModelRegistry,
    blobs: BlobStore,
    default_model: str,
    archive: IO[bytes],
    limits: ArchiveLimits,
    queue: JobQueue | None,
    model: str | None = None,
    explain: bool = True,
    idempotency_key: str | None = None,
    via: str | None = None,
    team: str | None = None,
) -> Submitted:
    """A batch of the images of a ZIP archive (see :mod:`clearscan.batches.archive` for what
    is refused), in the user's team (`team` names one of several). The images are staged, and
    discarded again unless the whole batch is accepted."""
    jobs.check_key(idempotency_key)
    if idempotency_key and (earlier := _by_key(db=db, key=idempotency_key, user=user)):
        return Submitted(earlier, False)
    team_id = teams.team_for_new_row(db=db, user=user, team=team)
    ref = resolve_model(registry=registry, model=model, default_model=default_model, user=user)
    items: list[NewItem] = []
    chunk: list[bytes] = []
    names: list[str] = []

    def flush() -> None:
        keys = blobs.stage_batch(chunk)
        for data, key, name in zip(chunk, keys, names, strict=True):
            items.append(NewItem(digest=hashlib.sha256(data).hexdigest(), staged=key, name=name))
        chunk.clear()
        names.clear()

    accepted = None
    try:
        size = 0
        for entry in read_archive(archive, limits):
            chunk.append(entry.data)
            names.append(entry.name)
            size += len(entry.data)
            if size >= _CHUNK_BYTES:
                flush()
                size = 0
        flush()
        accepted = submit(
            db=db,
            ctx=ctx,
            user=user,
            model=ref,
            explain=explain,
            source="archive",
            items=items,
            queue=queue,
            idempotency_key=idempotency_key,
            via=via,
            team_id=team_id,
        )
        return accepted
    finally:
        if accepted is None or not accepted.created:  # refused, or an earlier request's batch
            discard_staged(blobs, [it.staged for it in items if it.staged])


def submit_images(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    registry: ModelRegistry,
    default_model: str,
    image_ids: Sequence[str],
    queue: JobQueue | None,
    model: str | None = None,
    explain: bool = True,
    idempotency_key: str | None = None,
    via: str | None = None,
    team: str | None = None,
) -> Submitted:
    """A batch of images already stored in cases the user may see (their teams' cases; every
    case for an admin), in the user's team (`team` names one of several). An id that names no
    image, or an image of a case the user may not see (the same reply), or an image that holds
    feature values rather than pixels, refuses the batch (422)."""
    jobs.check_key(idempotency_key)
    if idempotency_key and (earlier := _by_key(db=db, key=idempotency_key, user=user)):
        return Submitted(earlier, False)
    team_id = teams.team_for_new_row(db=db, user=user, team=team)
    scope = teams.scope_of(db=db, user=user, ctx=ctx)
    ref = resolve_model(registry=registry, model=model, default_model=default_model, user=user)
    if len(image_ids) > MAX_ITEMS:
        raise errors.TooLarge(f"a batch holds at most {MAX_ITEMS:,} images")
    wanted = set(image_ids)
    rows = db.execute(
        select(Image.id, Image.sha256, Image.format)
        .join(Case, Case.id == Image.case_id)
        .where(Image.id.in_(wanted), scope.where(Case.team_id))
    ).all()
    found = {r.id: r for r in rows}
    items = []
    for n, image_id in enumerate(image_ids, 1):
        row = found.get(image_id)
        if row is None:
            raise BatchRefused(f"image {n} of the list ({image_id!r}) does not exist")
        if row.format == "features":
            raise BatchRefused(f"image {n} of the list holds feature values, not an image")
        items.append(NewItem(digest=row.sha256, source_image_id=row.id))
    return submit(
        db=db,
        ctx=ctx,
        user=user,
        model=ref,
        explain=explain,
        source="images",
        items=items,
        queue=queue,
        idempotency_key=idempotency_key,
        via=via,
        team_id=team_id,
    )


# --- reading ------------------------------------------------------------------------------------


def list_batches(
    *,
    db: Session,
    scope: Scope | None = None,
    limit: int = 50,
    offset: int = 0,
    status: str | None = None,
) -> Batches:
    """Batches `scope` may see (None: all), newest first (ties by id), optionally of one
    status."""
    q = select(Job).where(Job.kind == BATCH_KIND)
    if scope is not None:
        q = q.where(scope.where(Job.team_id))
    if status:
        q = q.where(Job.status == status)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return Batches(list(rows.all()), total)


def get_batch(*, db: Session, batch_id: str, scope: Scope | None = None) -> Job:
    """The batch; BatchNotFound for a missing id and for a batch `scope` may not see."""
    missing = BatchNotFound(f"batch {batch_id} not found")
    return jobs.get_owned(db=db, job_id=batch_id, kind=BATCH_KIND, scope=scope, missing=missing)


def progress_of(*, db: Session, batch_ids: Iterable[str]) -> dict[str, BatchProgress]:
    """Each batch's progress, counted from its items (the job row's progress lags behind by up
    to a second)."""
    ids = list(batch_ids)
    if not ids:
        return {}
    rows = db.execute(
        select(
            BatchItem.batch_id,
            func.count(),
            func.sum(case((BatchItem.status == "succeeded", 1), else_=0)),
            func.sum(case((BatchItem.status == "failed", 1), else_=0)),
        )
        .where(BatchItem.batch_id.in_(ids))
        .group_by(BatchItem.batch_id)
    ).all()
    out = {}
    for batch_id, total, ok, bad in rows:
        ok, bad = int(ok or 0), int(bad or 0)
        out[batch_id] = BatchProgress(
            total=int(total), done=ok + bad, succeeded=ok, failed=bad, queued=int(total) - ok - bad
        )
    return out


_EMPTY = BatchProgress(total=0, done=0, succeeded=0, failed=0, queued=0)


def summaries(*, db: Session, jobs: Sequence[Job]) -> list[BatchPublic]:
    progress = progress_of(db=db, batch_ids=(j.id for j in jobs))
    return [BatchPublic.of(j, progress.get(j.id, _EMPTY)) for j in jobs]


def items_of(*, db: Session, batch_id: str) -> list[BatchItem]:
    return list(
        db.scalars(select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.idx))
    )


def detail(*, db: Session, job: Job) -> BatchDetail:
    """The batch with every item's result: its case, top label and the version that made it."""
    items = items_of(db=db, batch_id=job.id)
    cases = [it.case_id for it in items if it.case_id]
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(cases), 500):
        rows = db.execute(
            select(
                Prediction.case_id,
                Prediction.top_label,
                Prediction.model_name,
                Prediction.model_version,
            ).where(Prediction.case_id.in_(cases[start : start + 500]))
        ).all()
        for case_id, top, name, version in rows:
            found.setdefault(case_id, (top, f"{name}:{version}"))
    progress = progress_of(db=db, batch_ids=[job.id]).get(job.id, _EMPTY)
    return BatchDetail(
        **BatchPublic.fields_of(job, progress),
        items=[BatchItemPublic.of(it, found.get(it.case_id or "")) for it in items],
    )


# --- cancelling ---------------------------------------------------------------------------------


def may_cancel(job: Job, user: User) -> bool:
    """Administrators may cancel any batch; clinicians their own."""
    return user.role == Role.admin.value or (
        user.role == Role.clinician.value and (job.params or {}).get("user_id") == user.id
    )


def cancel_batch(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    batch_id: str,
    blobs: BlobStore,
    via: str | None = None,
) -> Job:
    """Cancel a queued batch at once (its staged images are discarded), or stop a running one
    before its next image (the cases made so far are kept; its runner discards the rest);
    audited. BatchNotFound (404), BatchForbidden (403) for another clinician's batch,
    JobConflict (409) when it already ended. A batch of a team the user is not in is not
    found."""
    job = get_batch(db=db, batch_id=batch_id, scope=teams.scope_of(db=db, user=user, ctx=ctx))
    if not may_cancel(job, user):
        raise BatchForbidden("only the clinician who submitted a batch, or an admin, may cancel it")
    try:
        job = jobs.cancel(db=db, job_id=batch_id, kind=BATCH_KIND)
    except jobs.JobConflict:
        raise BatchConflict(f"batch {batch_id} already {job.status}") from None
    entry = audit.Entry(Action.BATCH_CANCEL, object_type="job", object_id=job.id)
    if via:
        entry.details = {"via": via}
    audit.append(entry, db=db, ctx=ctx)
    db.commit()
    if job.status == "cancelled":  # it had not started: no runner will discard its inputs
        staged = db.scalars(
            select(BatchItem.staged).where(
                BatchItem.batch_id == job.id, BatchItem.staged.is_not(None)
            )
        ).all()
        discard_staged(blobs, [k for k in staged if k])
    return job
