"""Shadow runs as jobs: with Celery workers (CLEARSCAN_BROKER_URL) the API does not run a shadow
version itself; each answered request that has a shadow queues a `shadow` job naming its
predictions, and a worker runs the shadow version on the stored images and records the
comparisons. Embedded, the serving process runs it on a background thread instead
(clearscan.cases.workflow)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.cases.models import Image, Prediction
from clearscan.imaging import Limits
from clearscan.inference.tasks import ImageClassificationTask, ImageRequest
from clearscan.jobs import service as jobs
from clearscan.jobs.delivery import JobQueue
from clearscan.jobs.service import JobContext, JobError
from clearscan.registry.errors import ModelNotFound
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.service import ShadowComparison, record_shadow
from clearscan.storage import BlobStore

log = logging.getLogger(__name__)

SHADOW_KIND: Final = "shadow"
SHADOW_ATTEMPTS = 2  # best effort: a shadow that kills its worker twice is dropped


def queue_shadow(
    *,
    db: Session,
    queue: JobQueue,
    name: str,
    shadow_version: str,
    served_version: str,
    prediction_ids: Sequence[str],
) -> str | None:
    """Queue the shadow run of these (committed) predictions; its job id, or None when it could
    not be queued (logged: a shadow never fails the request it shadows)."""
    try:
        job = jobs.submit(
            db=db,
            kind=SHADOW_KIND,
            params={
                "name": name,
                "shadow_version": shadow_version,
                "served_version": served_version,
                "predictions": list(prediction_ids),
            },
            actor=None,
            queue=queue.route(SHADOW_KIND),
            max_attempts=SHADOW_ATTEMPTS,
        )
        job_id, job_queue = job.id, job.queue
        db.commit()
    except SQLAlchemyError as exc:
        db.rollback()
        log.error("shadow run of %s:%s not queued: %s", name, shadow_version, type(exc).__name__)
        return None
    queue.deliver([(job_id, job_queue)])  # never raises: the sweep delivers what it could not
    return job_id


def run_shadow(
    ctx: JobContext,
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    registry: ModelRegistry,
    limits: Limits,
) -> dict[str, Any]:
    """The `shadow` job handler: the shadow version on the stored images of the predictions;
    the comparisons and the job's end are one transaction (exactly once)."""
    p = ctx.params
    ids = [str(i) for i in p["predictions"]]
    with sessions() as db:
        rows = db.execute(
            select(Prediction, Image.sha256)
            .join(Image, Image.id == Prediction.image_id)
            .where(Prediction.id.in_(ids))
        ).all()
        for pred, _ in rows:
            db.expunge(pred)
    found = {pred.id: (pred, sha) for pred, sha in rows}
    served = [found[i] for i in ids if i in found]  # a case deleted meanwhile drops out
    if not served:
        return {"compared": 0}
    try:
        entry = registry.version(str(p["name"]), str(p["shadow_version"]))
    except ModelNotFound:  # removed since: nothing to compare with
        raise JobError(f"shadow version {p['name']}:{p['shadow_version']} is gone") from None
    uploads = [blobs.get(sha) for _, sha in served]
    with registry.lease(entry) as model:
        request = ImageRequest(uploads=uploads, limits=limits, explain=False)
        result = ImageClassificationTask(model)(request)
    comparisons = [
        ShadowComparison(
            prediction_id=pred.id,
            served_label=pred.top_label,
            shadow_label=item.top_label,
            served_ms=pred.inference_ms,
            shadow_ms=item.inference_ms,
        )
        for (pred, _), item in zip(served, result.items, strict=True)
    ]
    out = {"compared": len(comparisons)}
    with sessions() as db:
        record_shadow(
            db=db,
            name=str(p["name"]),
            served_version=str(p["served_version"]),
            shadow_version=str(p["shadow_version"]),
            comparisons=comparisons,
            before_commit=lambda db: ctx.complete(db, out),
        )
    return out
