"""Training runs and evaluations as one service: list, submit, get, cancel, compare and read the
report. The API's routers and the web's pages both call these; they are keyword-only, take the
session, raise :class:`~clearscan.errors.ClearScanError` subclasses and commit what they change.

A training run is a `train` job and an evaluation an `evaluate` job; their rows live in the job
table, so "a run" below means either."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.errors import ClearScanError, Conflict
from clearscan.jobs import service as jobs
from clearscan.jobs.delivery import JobQueue, commit_and_deliver
from clearscan.jobs.models import Job
from clearscan.registry.routing import ModelRegistry
from clearscan.storage.base import BlobError, BlobStore
from clearscan.teams import service as teams
from clearscan.teams.service import Scope
from clearscan.training.evaluation import EVAL_KIND, EvalRequest, compare, resolve
from clearscan.training.runs import TRAIN_KIND, TrainRequest, check_request

__all__ = [
    "EVAL_KIND",
    "TRAIN_KIND",
    "ReportUnreadable",
    "RunKind",
    "RunNotFinished",
    "Runs",
    "cancel_run",
    "compare_evaluations",
    "evaluation_report",
    "get_run",
    "list_runs",
    "submit_evaluation",
    "submit_run",
    "succeeded_evaluation",
]

RunKind = Literal["train", "evaluate"]
_NOUN = {TRAIN_KIND: "training run", EVAL_KIND: "evaluation"}


class RunNotFinished(Conflict):
    """The evaluation has not succeeded (yet), so it has no result to show (409)."""


class ReportUnreadable(ClearScanError):
    status_code = 500
    title = "Report unreadable"


class Runs(NamedTuple):
    """One page of runs, newest first, and how many match in all."""

    items: list[Job]
    total: int


def _model_filter(kind: str, model: str) -> ColumnElement[bool]:
    """NAME:VERSION matches that version, NAME every version of it. An evaluation's model is the
    version it evaluated; a training run's the version it produced. Names compare
    case-sensitively (a prefix compare, not LIKE, which SQLite folds to lower case)."""
    ref = (Job.params["model"] if kind == EVAL_KIND else Job.result["model"]).as_string()
    same: ColumnElement[bool] = ref == model
    if ":" not in model:
        prefix = model + ":"
        same = or_(same, func.substr(ref, 1, len(prefix)) == prefix)
    return same


def list_runs(
    *,
    db: Session,
    kind: RunKind = TRAIN_KIND,
    limit: int = 50,
    offset: int = 0,
    model: str | None = None,
    dataset: str | None = None,
    status: str | None = None,
    scope: Scope | None = None,
) -> Runs:
    """Runs of `kind`, newest first (ties by id), filtered and paged in SQL.

    `model` is NAME or NAME:VERSION (see :func:`_model_filter`); `dataset` the name or id the
    run was asked for; `status` one job status (queued, running, succeeded, failed, cancelled);
    `scope` the teams whose runs may be seen (None: all).
    """
    q = select(Job).where(Job.kind == kind)
    if scope is not None:
        q = q.where(scope.where(Job.team_id))
    if model:
        q = q.where(_model_filter(kind, model))
    if dataset:
        q = q.where(Job.params["dataset"].as_string() == dataset)
    if status:
        q = q.where(Job.status == status)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return Runs(list(rows.all()), total)


def get_run(
    *, db: Session, run_id: str, kind: RunKind = TRAIN_KIND, scope: Scope | None = None
) -> Job:
    """The run of this id and kind (JobNotFound, 404, otherwise, and for a run `scope` may not
    see)."""
    job = jobs.get(db=db, job_id=run_id, kind=kind)
    teams.check(
        db=db,
        scope=scope,
        team_id=job.team_id,
        object_type="job",
        object_id=job.id,
        missing=jobs.JobNotFound(f"job {run_id!r} not found"),
    )
    return job


def _via(details: dict[str, Any], via: str | None) -> dict[str, Any]:
    return {**details, "via": via} if via else details


def submit_run(
    *,
    db: Session,
    ctx: audit.RequestContext,
    request: TrainRequest,
    queue: JobQueue | None,
    via: str | None = None,
    max_attempts: int = jobs.DEFAULT_MAX_ATTEMPTS,
    team_id: int | None = None,
) -> Job:
    """Queue a training run (of team `team_id`; None: the team general) and its audit event,
    and deliver it to `queue` (None: the caller runs it). TrainingError (422) for a request
    that cannot run; QueueUnavailable (503) when the queue cannot take it, and then nothing is
    written. `via` ("web") is audited."""
    ds = check_request(db, request)
    params = request.to_params()
    job = jobs.submit_audited(
        db=db,
        ctx=ctx,
        kind=TRAIN_KIND,
        action=Action.TRAINING_SUBMIT,
        params=params,
        details=_via({**params, "dataset": ds.name, "dataset_hash": ds.content_hash}, via),
        max_attempts=max_attempts,
    )
    job.team_id = team_id if team_id is not None else teams.default_team_id(db=db)
    commit_and_deliver(db=db, queue=queue, jobs=[job])
    return job


def submit_evaluation(
    *,
    db: Session,
    ctx: audit.RequestContext,
    registry: ModelRegistry,
    request: EvalRequest,
    queue: JobQueue | None,
    via: str | None = None,
    max_attempts: int = jobs.DEFAULT_MAX_ATTEMPTS,
    team_id: int | None = None,
) -> Job:
    """Queue an evaluation (of team `team_id`; None: the team general) of the version
    `request.model` names (pinned: NAME alone becomes the active version's NAME:VERSION) and its
    audit event; EvaluationError (422) for what does not fit."""
    entry, ds, _ = resolve(db, registry, request)
    params = {**request.to_params(), "model": entry.manifest.ref}
    job = jobs.submit_audited(
        db=db,
        ctx=ctx,
        kind=EVAL_KIND,
        action=Action.EVALUATION_SUBMIT,
        params=params,
        details=_via({**params, "dataset_hash": ds.content_hash}, via),
        max_attempts=max_attempts,
    )
    job.team_id = team_id if team_id is not None else teams.default_team_id(db=db)
    commit_and_deliver(db=db, queue=queue, jobs=[job])
    return job


def cancel_run(
    *,
    db: Session,
    ctx: audit.RequestContext,
    run_id: str,
    via: str | None = None,
    scope: Scope | None = None,
) -> Job:
    """Cancel a queued training run at once, or ask a running one to stop at its next progress
    report; audited. JobNotFound (404, also for a run `scope` may not see), or JobConflict (409)
    when the run already ended."""
    get_run(db=db, run_id=run_id, kind=TRAIN_KIND, scope=scope)
    job = jobs.cancel(db=db, job_id=run_id, kind=TRAIN_KIND)
    entry = audit.Entry(Action.TRAINING_CANCEL, object_type="job", object_id=job.id)
    entry.details = _via({}, via)
    audit.append(entry, db=db, ctx=ctx)
    db.commit()
    return job


def succeeded_evaluation(*, db: Session, eval_id: str, scope: Scope | None = None) -> Job:
    """The evaluation of this id, with its result (RunNotFinished, 409, until it succeeded)."""
    job = get_run(db=db, run_id=eval_id, kind=EVAL_KIND, scope=scope)
    if job.status != "succeeded" or not job.result:
        raise RunNotFinished(f"evaluation {eval_id} has not succeeded ({job.status})")
    return job


def compare_evaluations(
    *, db: Session, a: str, b: str, scope: Scope | None = None
) -> dict[str, Any]:
    """Two succeeded evaluations of the same dataset split side by side (b minus a)."""
    ra = succeeded_evaluation(db=db, eval_id=a, scope=scope).result or {}
    rb = succeeded_evaluation(db=db, eval_id=b, scope=scope).result or {}
    return compare(ra, rb)


def evaluation_report(
    *, db: Session, blobs: BlobStore, eval_id: str, scope: Scope | None = None
) -> str:
    """The self-contained HTML report of a succeeded evaluation."""
    job = succeeded_evaluation(db=db, eval_id=eval_id, scope=scope)
    try:
        return blobs.get((job.result or {})["report_blob"]).decode("utf-8")
    except BlobError as exc:
        raise ReportUnreadable(f"stored report unreadable: {exc}") from None
