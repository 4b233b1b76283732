"""Dataset import as a job (kind ``dataset-import``), for uploads too large to import within one
request: ``POST /api/v1/datasets`` with ``Prefer: respond-async``.

Submitting refuses at once what is cheap to check (the name's pattern, a name taken or being
imported), stages the upload in the blob store's staging area (streamed; the client's file name
is never a path; raw DICOM is de-identified only by the import itself, so the upload is never a
blob and never backed up), then writes the job row and its audit event in one transaction and
delivers it (`commit_and_deliver`: a queue that cannot take it refuses with 503, nothing is
written and the staged upload is discarded). An idempotency key names one import.

The handler copies the staged upload to a temporary file in the data dir, runs the synchronous
import
(:func:`clearscan.datasets.service.import_dataset`) on it. The dataset, its audit event and the
job's end are one transaction (`JobContext.complete` inside the import's commit), so a run
killed before that commit left nothing and is run again, and one killed after it is over: the
job is already succeeded and no worker claims it again. A dataset the import refuses ends the
job ``failed`` with the reason the synchronous API gives. The staged upload is discarded when the
job ends (succeeded, failed or cancelled); a run killed on the way keeps it for the next run, and
the staging sweep removes what a job that ended otherwise left (:func:`staged_in_use`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearscan import errors
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.datasets import service
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset
from clearscan.datasets.schemas import DatasetImportPublic
from clearscan.imaging import Limits
from clearscan.imaging.deid import DeidPolicy
from clearscan.jobs import service as job_service
from clearscan.jobs.delivery import JobQueue, commit_and_deliver
from clearscan.jobs.models import Job
from clearscan.jobs.service import JobContext, JobLeaseLost
from clearscan.storage import BlobError, BlobIntegrityError, BlobStore
from clearscan.teams import service as teams
from clearscan.teams.service import Scope

__all__ = [
    "DATASET_IMPORT_KIND",
    "ImportNotFound",
    "Submitted",
    "get_import",
    "public",
    "run_import",
    "submit_import",
]

log = logging.getLogger(__name__)
DATASET_IMPORT_KIND: Final = "dataset-import"
"""The job kind of a dataset import."""
PENDING = ("queued", "running")
_CHUNK = 1 << 20


class ImportNotFound(errors.NotFound):
    """No dataset import of this id (404)."""


class Submitted(NamedTuple):
    """The import's job, and whether this request created it (False: an earlier request with
    the same idempotency key did)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class ImportParams:
    """What the job row keeps: the import's options, the staged upload (its staging key and
    sha256) and who asked. Imports submitted before uploads were staged name a blob instead
    (`staged` None, `digest` the blob)."""

    options: service.ImportOptions
    staged: str | None
    digest: str
    size: int
    user_id: int
    actor: str | None
    client_addr: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.options),
            "staged": self.staged,
            "digest": self.digest,
            "size": self.size,
            "user_id": self.user_id,
            "actor": self.actor,
            "client_addr": self.client_addr,
        }

    @classmethod
    def of(cls, params: dict[str, Any]) -> ImportParams:
        names = [f.name for f in dataclasses.fields(service.ImportOptions)]
        return cls(
            options=service.ImportOptions(**{k: params[k] for k in names if k in params}),
            staged=params.get("staged"),
            digest=str(params["digest"] if "digest" in params else params["sha256"]),
            size=int(params["size"]),
            user_id=int(params["user_id"]),
            actor=params.get("actor"),
            client_addr=params.get("client_addr"),
        )


# --- submitting ---------------------------------------------------------------------------------


def _by_key(*, db: Session, key: str, user_id: int) -> Job | None:
    """The import an earlier request of this user made under `key` (409 for another's key)."""
    return job_service.earlier_submission(db=db, key=key, kind=DATASET_IMPORT_KIND, user_id=user_id)


def _check_not_pending(*, db: Session, name: str) -> None:
    """DatasetExists (409) while a queued or running import will create `name`."""
    rows = db.execute(
        select(Job.id, Job.params).where(Job.kind == DATASET_IMPORT_KIND, Job.status.in_(PENDING))
    ).all()
    for job_id, params in rows:
        if (params or {}).get("name") == name:
            raise service.DatasetExists(
                f"a dataset named {name!r} is being imported (import {job_id})"
            )


def submit_import(
    *,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    user_id: int,
    upload: IO[bytes],
    tmp_dir: Path,
    options: service.ImportOptions,
    max_upload_bytes: int,
    queue: JobQueue | None,
    idempotency_key: str | None = None,
    team_id: int | None = None,
) -> Submitted:
    """Accept an import to run as a job (the dataset will belong to team `team_id`; None: the
    team general): refuse what can be refused now (audited as the
    synchronous import does), store the upload as a blob, write the job and its audit event,
    commit and deliver it (QueueUnavailable, 503, and nothing written when the queue cannot
    take it)."""
    job_service.check_key(idempotency_key)
    if idempotency_key and (earlier := _by_key(db=db, key=idempotency_key, user_id=user_id)):
        return Submitted(earlier, False)
    try:
        service.check_name(db=db, name=options.name)
        _check_not_pending(db=db, name=options.name)
    except DatasetError as exc:
        service.record_rejection(db=db, ctx=ctx, reason=exc.detail)
        raise
    db.rollback()  # no transaction stays open while the upload is stored
    with service.spooled(upload, tmp_dir, max_bytes=max_upload_bytes) as (path, size):
        digest = _sha256_of(path)
        staged = blobs.stage_file(path)
    params = ImportParams(
        options=options,
        staged=staged,
        digest=digest,
        size=size,
        user_id=user_id,
        actor=ctx.actor,
        client_addr=ctx.client_addr,
    )
    try:
        job = job_service.submit_audited(
            db=db,
            ctx=ctx,
            kind=DATASET_IMPORT_KIND,
            action=Action.DATASET_IMPORT_SUBMIT,
            params=params.to_json(),
            details={"name": options.name, "digest": digest, "size": size},
            idempotency_key=idempotency_key,
        )
        job.team_id = team_id if team_id is not None else teams.default_team_id(db=db)
        commit_and_deliver(db=db, queue=queue, jobs=[job])
    except IntegrityError:
        # another request with the same key committed first: that one is the import
        db.rollback()
        _discard(blobs, staged)
        earlier = _by_key(db=db, key=idempotency_key, user_id=user_id) if idempotency_key else None
        if earlier is None:
            raise
        return Submitted(earlier, False)
    except BaseException:
        _discard(blobs, staged)
        raise
    return Submitted(job, True)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _discard(blobs: BlobStore, staged: str | None) -> None:
    """Delete a staged upload; a store that fails to is logged (the staging sweep retries)."""
    if not staged:
        return
    try:
        blobs.discard_staged(staged)
    except BlobError as exc:
        log.warning("staged upload not discarded (the sweep will retry): %s", exc.detail)


def staged_in_use(db: Session) -> set[str]:
    """The staged uploads of imports that have not ended: the staging sweep keeps these."""
    rows = db.scalars(
        select(Job.params).where(Job.kind == DATASET_IMPORT_KIND, Job.status.in_(PENDING))
    ).all()
    return {str(p["staged"]) for p in rows if p and p.get("staged")}


# --- reading ------------------------------------------------------------------------------------


def get_import(*, db: Session, import_id: str, scope: Scope | None = None) -> Job:
    """The import; ImportNotFound for a missing id and for an import `scope` may not see."""
    missing = ImportNotFound(f"dataset import {import_id} not found")
    return job_service.get_owned(
        db=db, job_id=import_id, kind=DATASET_IMPORT_KIND, scope=scope, missing=missing
    )


def public(*, db: Session, job: Job) -> DatasetImportPublic:
    """The import as the API shows it; `dataset` once it succeeded."""
    dataset_id = (job.result or {}).get("dataset_id") if job.status == "succeeded" else None
    dataset = db.get(Dataset, dataset_id) if dataset_id else None
    return DatasetImportPublic.of(job, dataset)


# --- running ------------------------------------------------------------------------------------


def _fetch(
    blobs: BlobStore, p: ImportParams, out: IO[bytes], on_bytes: Callable[[int], None]
) -> None:
    """Copy the staged upload (or, for an import submitted before uploads were staged, the
    blob) into `out` a megabyte at a time, checking its sha256."""
    h = hashlib.sha256()
    n = 0
    with blobs.open_staged(p.staged) if p.staged else blobs.open(p.digest) as src:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
            on_bytes(n)
    out.flush()
    if h.hexdigest() != p.digest:
        raise BlobIntegrityError(f"stored data failed its integrity check: upload {p.digest}")


def result_of(ds: Dataset) -> dict[str, Any]:
    return {
        "dataset_id": ds.id,
        "name": ds.name,
        "content_hash": ds.content_hash,
        "n_items": ds.n_items,
    }


def run_import(
    ctx: JobContext,
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    tmp_dir: Path,
    limits: Limits,
    max_bytes: int,
    deid: DeidPolicy | None = None,
) -> dict[str, Any]:
    """The ``dataset-import`` job handler (see the module's docstring); DICOM items are
    de-identified under `deid`."""
    p = ImportParams.of(ctx.params)
    ctx.report(force=True, stage="reading", bytes=0, total_bytes=p.size)
    try:
        result = _import(ctx, p, sessions, blobs, tmp_dir, limits, max_bytes, deid)
    except JobLeaseLost:
        raise  # another run holds the job and needs the upload
    except Exception:
        _discard(blobs, p.staged)  # the job ends failed or cancelled with this
        raise
    _discard(blobs, p.staged)
    return result


def _import(
    ctx: JobContext,
    p: ImportParams,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    tmp_dir: Path,
    limits: Limits,
    max_bytes: int,
    deid: DeidPolicy | None,
) -> dict[str, Any]:
    audit_ctx = audit.RequestContext(
        actor=p.actor, client_addr=p.client_addr, request_id=ctx.job_id
    )

    def end_job(db: Session, ds: Dataset) -> None:
        ctx.complete(db, result_of(ds))

    try:
        with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix=".dataset-") as tmp:
            _fetch(
                blobs,
                p,
                tmp,
                lambda n: ctx.report(stage="reading", bytes=n, total_bytes=p.size),
            )
            ctx.report(force=True, stage="importing", bytes=p.size, total_bytes=p.size)
            with sessions() as db:
                team_id = db.scalar(select(Job.team_id).where(Job.id == ctx.job_id))
                ds = service.import_dataset(
                    db=db,
                    blobs=blobs,
                    ctx=audit_ctx,
                    source=Path(tmp.name),
                    options=p.options,
                    limits=limits,
                    max_bytes=max_bytes,
                    before_commit=end_job,
                    team_id=team_id,
                    deid=deid,
                )
                return result_of(ds)
    except OSError as exc:  # the data dir, not the data
        raise service.DatasetStorageError(
            f"storage error while importing: {exc.strerror or exc}"
        ) from None
