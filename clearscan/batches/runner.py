"""The `batch` job handler: analyse a batch's images in order, each through the same workflow as
``POST /api/v1/predict`` (:func:`clearscan.cases.workflow.predict_images`), one case per image.

Exactly once per item, however often the job is delivered: an item's case and the item's
``succeeded`` status are committed in one transaction (the workflow's own commit; a hook on the
session adds the item's update to it), and the update applies only to an item still ``queued``
of a job this attempt still holds. A run that is killed, or loses its lease, and runs again
skips what is done and continues with the first item still queued; a runner that lost its lease,
or races another on the same item, fails at the update and its transaction, case included, is
rolled back.

An image the workflow refuses (not decodable, too large) fails its item and the batch goes on. A
refusal that concerns the model rather than the image (gone, no active version, unavailable), a
blob store that cannot serve or a submitter no longer allowed stops the batch: it fails with the
reason, its unanalysed items stay queued, and the cases made before are kept.

An archive's images are staged uploads (raw DICOM among them): each is discarded once its item
has an outcome, and all of a batch's are discarded when it is cancelled or stops. What a killed
run leaves behind is removed by the staging sweep (:func:`staged_in_use`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Update, event, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit.service import RequestContext
from clearscan.auth.models import User
from clearscan.batches.models import BATCH_KIND, BatchItem
from clearscan.batches.service import discard_staged
from clearscan.cases.models import Case
from clearscan.cases.workflow import PredictRejected, predict_images
from clearscan.errors import ClearScanError, Unprocessable
from clearscan.imaging import Limits
from clearscan.imaging.deid import DeidPolicy
from clearscan.inference.base import Model
from clearscan.jobs.models import Job
from clearscan.jobs.service import JobCancelled, JobContext, JobError, JobLeaseLost
from clearscan.registry.catalog import ModelEntry
from clearscan.registry.routing import ModelRegistry
from clearscan.storage import BlobError, BlobIntegrityError, BlobNotFound, BlobStore

if TYPE_CHECKING:
    from clearscan.observability.metrics import Metrics

__all__ = ["BATCH_KIND", "BatchStopped", "ItemKey", "ItemServing", "run_batch", "run_item"]

log = logging.getLogger(__name__)
STOPPING_STATUSES = (404, 409)  # the model is gone or has no active version: not the image's fault


class BatchStopped(JobError, Unprocessable):
    """The batch cannot go on (the model, the user or the blob store); the job fails with it."""

    status_code = 422


class ItemTaken(Exception):
    """Another run recorded this item first: roll back what this run made of it."""


@dataclass(frozen=True)
class BatchParams:
    model: str
    explain: bool
    user_id: int

    @classmethod
    def of(cls, params: dict[str, Any]) -> BatchParams:
        return cls(
            model=str(params["model"]),
            explain=bool(params.get("explain", True)),
            user_id=int(params["user_id"]),
        )


@dataclass(frozen=True)
class ItemKey:
    """One item of one batch, as one attempt of the batch's job sees it (`attempt` None: a
    runner outside the job machinery, which is not fenced)."""

    batch_id: str
    idx: int
    attempt: int | None = None

    def queued(self) -> Update:
        """The item's update, applied only while it is still queued."""
        return update(BatchItem).where(
            BatchItem.batch_id == self.batch_id,
            BatchItem.idx == self.idx,
            BatchItem.status == "queued",
        )

    def fence(self, db: Session) -> None:
        """JobLeaseLost unless this attempt still holds the job. (Not a row lock: the item
        transaction already holds the audit chain's head, which a cancel takes after the job
        row, so locking the job row here could deadlock. A sweep landing between this check and
        the commit lets two attempts race for the item, and the conditional update on the item
        decides which one records it.)"""
        if self.attempt is None:
            return
        held = db.scalar(
            select(Job.id).where(
                Job.id == self.batch_id, Job.status == "running", Job.attempts == self.attempt
            )
        )
        if held is None:
            raise JobLeaseLost()

    def record(
        self, db: Session, status: str, *, case_id: str | None = None, error: str | None = None
    ) -> bool:
        """Write the item's outcome in the caller's transaction; False when it was no longer
        queued (the caller rolls back)."""
        self.fence(db)
        res = db.execute(
            self.queued().values(
                status=status, case_id=case_id, error=error, finished_at=datetime.now(UTC)
            )
        )
        return getattr(res, "rowcount", 0) == 1


class ItemServing:
    """The registry as the workflow sees it for one item: a pinned version when the batch names
    one, and the id of the case the workflow is making (it keys the version choice by it), so
    the item's update can name that case."""

    def __init__(self, registry: ModelRegistry, pinned: ModelEntry | None) -> None:
        self.registry = registry
        self.pinned = pinned
        self.case_id: str | None = None

    @contextmanager
    def _serve(self, name: str, key: str) -> Iterator[tuple[ModelEntry, Model]]:
        self.case_id = key
        if self.pinned is None:
            with self.registry.serve(name, key) as served:
                yield served
        else:
            with self.registry.lease(self.pinned) as model:
                yield self.pinned, model

    def serve(self, name: str, key: str) -> AbstractContextManager[tuple[ModelEntry, Model]]:
        return self._serve(name, key)

    def shadow_of(self, name: str) -> ModelEntry | None:
        # a pinned version is not the one a shadow is compared against
        return None if self.pinned is not None else self.registry.shadow_of(name)

    def lease(self, entry: ModelEntry) -> AbstractContextManager[Model]:
        return self.registry.lease(entry)


class MarkOnCommit:
    """A before-commit hook that marks the item succeeded in the transaction that holds its
    case (the workflow commits once, when the case is written; a refusal's audit event commits
    without a case, and the hook leaves the item alone)."""

    def __init__(self, key: ItemKey, serving: ItemServing) -> None:
        self.key, self.serving = key, serving
        self.marked: str | None = None

    def __call__(self, db: Session) -> None:
        case_id = self.serving.case_id
        if case_id is None or db.scalar(select(Case.id).where(Case.id == case_id)) is None:
            return
        if not self.key.record(db, "succeeded", case_id=case_id):
            raise ItemTaken(f"batch {self.key.batch_id}: image {self.key.idx + 1} done already")
        self.marked = case_id


Analyse = Callable[[Session, bytes, ItemServing, str], str]
"""Analyse one image in the session, committing its case; returns the case id."""


@dataclass
class Counts:
    total: int
    succeeded: int
    failed: int

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @classmethod
    def of(cls, rows: list[tuple[int, str]]) -> Counts:
        return cls(
            total=len(rows),
            succeeded=sum(s == "succeeded" for _, s in rows),
            failed=sum(s == "failed" for _, s in rows),
        )

    def report(self, ctx: JobContext, *, force: bool = False) -> None:
        ctx.report(force, done=self.done, total=self.total, failed=self.failed)


def run_batch(
    ctx: JobContext,
    *,
    sessions: sessionmaker[Session],
    registry: ModelRegistry,
    blobs: BlobStore,
    limits: Limits,
    default_model: str,
    deid: DeidPolicy,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """The `batch` job handler. Reports ``done``, ``total`` and ``failed`` as it goes; stops
    before the next item when cancelled."""
    ctx.stop_note = "the cases made so far are kept"
    params = BatchParams.of(ctx.params)
    with sessions() as db:
        user = db.get(User, params.user_id)
        if user is None or user.disabled:
            raise BatchStopped("the user who submitted the batch is disabled or gone")
        db.expunge(user)
        # the batch's cases belong to the batch's team
        team_id = db.scalar(select(Job.team_id).where(Job.id == ctx.job_id))
    rows = _statuses(sessions, ctx.job_id)
    counts = Counts.of(rows)
    name, _, version = params.model.partition(":")
    pinned = registry.version(name, version) if version else None
    audit_ctx = RequestContext(actor=user.username, request_id=ctx.job_id)

    def analyse(db: Session, data: bytes, serving: ItemServing, note: str) -> str:
        case, _ = predict_images(
            db=db,
            ctx=audit_ctx,
            user=user,
            registry=serving,
            blobs=blobs,
            limits=limits,
            max_files=1,
            default_model=default_model,
            sessions=sessions,
            metrics=metrics,
            uploads=[data],
            deid=deid,
            model_name=name,
            explain=params.explain,
            patient_ref=None,
            note=note,
            team_id=team_id,
        )
        return case.id

    counts.report(ctx, force=True)
    try:
        for idx, status in rows:
            if status != "queued":
                continue
            if ctx.cancelled():
                raise JobCancelled()
            outcome = run_item(
                sessions=sessions,
                key=ItemKey(ctx.job_id, idx, ctx.attempt),
                total=counts.total,
                analyse=analyse,
                serving=ItemServing(registry, pinned),
                blobs=blobs,
            )
            if outcome == "skipped":  # another run recorded it: count what it recorded
                counts = Counts.of(_statuses(sessions, ctx.job_id))
            else:
                counts.succeeded += outcome == "succeeded"
                counts.failed += outcome == "failed"
            counts.report(ctx)
    except (JobCancelled, BatchStopped):  # the job ends here: its queued items never run
        discard_staged(blobs, _staged_keys(sessions, ctx.job_id))
        raise
    counts = Counts.of(_statuses(sessions, ctx.job_id))
    counts.report(ctx, force=True)
    return {"total": counts.total, "succeeded": counts.succeeded, "failed": counts.failed}


def _staged_keys(sessions: sessionmaker[Session], batch_id: str) -> list[str]:
    with sessions() as db:
        keys = db.scalars(
            select(BatchItem.staged).where(
                BatchItem.batch_id == batch_id, BatchItem.staged.is_not(None)
            )
        ).all()
    return [k for k in keys if k]


def staged_in_use(db: Session) -> set[str]:
    """The staging keys of items still to be analysed by a batch that has not ended: the
    staging sweep keeps these and removes what no batch needs any more."""
    rows = db.scalars(
        select(BatchItem.staged)
        .join(Job, Job.id == BatchItem.batch_id)
        .where(
            BatchItem.staged.is_not(None),
            BatchItem.status == "queued",
            Job.status.in_(("queued", "running")),
        )
    ).all()
    return {k for k in rows if k}


def _statuses(sessions: sessionmaker[Session], batch_id: str) -> list[tuple[int, str]]:
    """(index, status) of every item of the batch, in order."""
    with sessions() as db:
        rows = db.execute(
            select(BatchItem.idx, BatchItem.status)
            .where(BatchItem.batch_id == batch_id)
            .order_by(BatchItem.idx)
        ).all()
    return [(idx, status) for idx, status in rows]


def run_item(
    *,
    sessions: sessionmaker[Session],
    key: ItemKey,
    total: int,
    analyse: Analyse,
    serving: ItemServing,
    blobs: BlobStore,
) -> str:
    """Analyse one item once: "succeeded", "failed", or "skipped" when it was no longer queued
    (another run did it). Raises BatchStopped when the batch cannot go on, JobLeaseLost when
    this attempt no longer holds the job."""
    with sessions() as db:
        item = db.get(BatchItem, (key.batch_id, key.idx))
        if item is None:
            return "skipped"
        staged = item.staged
        # raises leave the staged image: another run may still need it, or run_batch discards
        # every staged image of a batch that stops
        outcome = _run_item(db, item, key, total, analyse, serving, blobs)
        if staged:  # the item has its outcome: its upload is not needed any more
            discard_staged(blobs, [staged])
        return outcome


def _run_item(
    db: Session,
    item: BatchItem,
    key: ItemKey,
    total: int,
    analyse: Analyse,
    serving: ItemServing,
    blobs: BlobStore,
) -> str:
    if item.status != "queued":
        return "skipped"
    try:
        staged = item.staged
        data = blobs.get_staged(staged, item.digest) if staged else blobs.get(item.digest)
    except BlobNotFound as exc:
        why = (
            "the uploaded image is no longer staged (a restore from a backup made while "
            "the batch was queued loses what it had not analysed)"
            if item.staged
            else f"the stored image cannot be read: {exc.detail}"
        )
        return _finish(db, key, "failed", error=why)
    except BlobIntegrityError as exc:
        return _finish(db, key, "failed", error=f"the stored image cannot be read: {exc.detail}")
    except BlobError as exc:
        raise BatchStopped(f"the blob store cannot serve: {exc.detail}") from None
    note = f"Batch {key.batch_id[:8]}, image {key.idx + 1} of {total}"
    if item.name:
        note += f" ({item.name})"
    db.rollback()  # what was read so far is no part of the analysis' transaction
    hook = MarkOnCommit(key, serving)
    event.listen(db, "before_commit", hook)
    try:
        case_id = analyse(db, data, serving, note)
    except ItemTaken:
        db.rollback()
        return "skipped"
    except (JobCancelled, SQLAlchemyError):
        db.rollback()
        raise
    except ClearScanError as exc:  # PredictRejected carries the status of what refused
        db.rollback()
        status = exc.status_code
        if status >= 500 or (isinstance(exc, PredictRejected) and status in STOPPING_STATUSES):
            raise BatchStopped(f"stopped at image {key.idx + 1}: {exc.detail}") from None
        return _finish(db, key, "failed", error=exc.detail[:2000])
    except Exception as exc:
        db.rollback()
        log.exception("batch %s: image %d failed", key.batch_id, key.idx + 1)
        return _finish(db, key, "failed", error=f"internal error ({type(exc).__name__})")
    finally:
        event.remove(db, "before_commit", hook)
    if hook.marked != case_id:
        # the workflow made its case under an id the hook did not see: record it afterwards
        log.error("batch %s: image %d: case not marked with it", key.batch_id, key.idx + 1)
        return _finish(db, key, "succeeded", case_id=case_id)
    return "succeeded"


def _finish(
    db: Session, key: ItemKey, status: str, *, case_id: str | None = None, error: str | None = None
) -> str:
    """Record the item's outcome in its own transaction: `status`, or "skipped" when another
    run recorded one first."""
    try:
        recorded = key.record(db, status, case_id=case_id, error=error)
    except JobLeaseLost:
        db.rollback()
        raise
    db.commit()
    return status if recorded else "skipped"
