"""The analysis workflow shared by the API, the web pages and the CLI: resolve the model version,
run its inference task on the uploads (decode, check, preprocess, one model run for the batch),
persist, count, audit. A rejection stores nothing and is audited.

The workflow receives what it needs (the registry, the blob store, the limits) as parameters,
never the whole application state."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth.models import User
from clearscan.cases import service
from clearscan.cases.models import Case, Prediction, new_id
from clearscan.cases.shadow import queue_shadow
from clearscan.errors import ClearScanError
from clearscan.imaging import Limits
from clearscan.imaging.deid import Deidentified, DeidPolicy, deidentify_all
from clearscan.inference.admission import Admission
from clearscan.inference.base import Model
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.tasks import (
    ClassificationResponse,
    ClassifiedImage,
    ImageClassificationTask,
    ImageRequest,
    ImageSegmentationTask,
    PreparedImages,
    SegmentationResponse,
    SegmentedImage,
    TaskKind,
    task_kind,
)
from clearscan.inference.types import ExplainMethod
from clearscan.jobs.delivery import JobQueue
from clearscan.registry.service import ShadowComparison, record_shadow
from clearscan.storage import BlobStore
from clearscan.teams import service as teams

if TYPE_CHECKING:
    from clearscan.observability.metrics import Metrics

log = logging.getLogger(__name__)


class PredictRejected(ClearScanError):
    """An analysis refused (and audited); carries the status of the error that refused it."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code


class ServedVersion(Protocol):
    """A model version as the registry lists it."""

    @property
    def manifest(self) -> ModelManifest: ...


V = TypeVar("V", bound=ServedVersion)


class ModelServing(Protocol[V]):
    """What an analysis needs from the model registry: the version serving a request (canary
    share decided by `key`, held loaded while in use), the shadow version of a name, and a loaded
    version by its entry."""

    def serve(self, name: str, key: str) -> AbstractContextManager[tuple[V, Model]]: ...

    def shadow_of(self, name: str) -> V | None: ...

    def lease(self, entry: V) -> AbstractContextManager[Model]: ...


def predict_images(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    registry: ModelServing[V],
    blobs: BlobStore,
    limits: Limits,
    max_files: int,
    default_model: str,
    sessions: sessionmaker[Session],
    metrics: Metrics | None = None,
    uploads: Sequence[bytes],
    model_name: str | None,
    explain: bool,
    explain_method: str = "gradcam",
    patient_ref: str | None,
    note: str | None,
    shadow_queue: JobQueue | None = None,
    deid: DeidPolicy,
    team: str | None = None,
    team_id: int | None = None,
    admission: Admission | None = None,
) -> tuple[Case, list[Prediction]]:
    """Analyse uploaded images with `model_name` (default: `default_model`) and store the case.
    PredictRejected (audited, nothing stored) when the request or an image is refused. A shadow
    version, if the name has one, then runs on the same inputs: as a job when `shadow_queue`
    hands jobs to workers, else on a background thread of this process (`sessions` opens the
    session that stores its comparison). The case belongs to team `team_id` when given (a batch:
    its own team), else to the user's team (`team` names one of several; NoTeam, 422, for a
    user in no team).

    `admission` caps the analyses this process decodes and runs at once: when all its slots are
    taken the request is refused at once with Busy (503 + Retry-After; not audited, counted in
    the metrics). The uploads are decoded and preprocessed one at a time within the request's
    decoded-bytes budget (`limits`)."""
    with admission.slot() if admission is not None else nullcontext(), refusals(metrics, db, ctx):
        if team_id is None:
            team_id = teams.team_for_new_row(db=db, user=user, team=team)
        if not uploads:
            raise PredictRejected(422, "no file uploaded: send one or more 'file' parts")
        if len(uploads) > max_files:
            raise PredictRejected(413, f"too many files: at most {max_files} per request")
        uploads, cleaned, patient_key = deidentify_uploads(uploads, deid, limits)
        name = model_name or default_model
        case_id = new_id()
        method = ExplainMethod.parse(explain_method)
        # the canary share is decided per case; the version stays loaded while it is used
        with registry.serve(name, case_id) as (entry, model):
            kind = task_kind(entry.manifest)
            if kind is TaskKind.TABULAR_CLASSIFICATION:
                raise PredictRejected(
                    422,
                    f"model {entry.manifest.ref} takes feature values: POST JSON "
                    '{"model": ..., "features": {...}} with Content-Type application/json',
                )
            request = ImageRequest(uploads=uploads, limits=limits, explain=explain, method=method)
            result: ClassificationResponse | SegmentationResponse
            if kind is TaskKind.IMAGE_SEGMENTATION:
                result = ImageSegmentationTask(model)(request)
                explain = False  # segmentations are not explained (yet)
            else:
                result = ImageClassificationTask(model)(request)
    case, preds = service.save_case(
        case_id=case_id,
        db=db,
        blobs=blobs,
        ctx=ctx,
        user=user,
        manifest=entry.manifest,
        uploads=uploads,
        results=result.items,
        patient_ref=patient_ref,
        note=note,
        explain_method=method.value if explain else None,
        team_id=team_id,
        patient_key=patient_key,
        deid=cleaned,
    )
    if metrics is not None:
        items: Sequence[ClassifiedImage | SegmentedImage] = result.items
        for p, item in zip(preds, items, strict=True):
            metrics.observe_prediction(
                model=p.model_name,
                version=p.model_version,
                label=p.top_label,
                seconds=p.inference_ms / 1000,
                ood_score=item.ood_score if isinstance(item, ClassifiedImage) else None,
                batch_size=item.batch_size,
            )
    if isinstance(result, SegmentationResponse):
        return case, preds  # shadow comparisons are of class decisions
    shadow = registry.shadow_of(name)
    if shadow is not None and shadow.manifest.version != entry.manifest.version:
        if shadow_queue is not None and not shadow_queue.runs_here:  # workers run it
            queue_shadow(
                db=db,
                queue=shadow_queue,
                name=shadow.manifest.name,
                shadow_version=shadow.manifest.version,
                served_version=entry.manifest.version,
                prediction_ids=[p.id for p in preds],
            )
            return case, preds
        _shadow_pool().submit(
            _run_shadow,
            registry,
            sessions,
            shadow,
            entry.manifest.version,
            result.prepared,
            result.items,
            preds,
        )
    return case, preds


def deidentify_uploads(
    uploads: Sequence[bytes], policy: DeidPolicy, limits: Limits
) -> tuple[list[bytes], list[Deidentified | None], str | None]:
    """De-identify the DICOM uploads (clearscan.imaging.deid): the bytes to analyse and store,
    what de-identification learnt of each, and the case's pseudonymous patient key.
    PredictRejected (422) for images of two patients, or with burned-in annotation where the
    site refuses them."""
    cleaned = deidentify_all(uploads, policy=policy, limits=limits)
    keys = {d.patient_key for d in cleaned if d is not None and d.patient_key}
    if len(keys) > 1:
        raise PredictRejected(
            422,
            f"the images belong to {len(keys)} different patients (DICOM Patient ID): "
            "send one patient's images per analysis",
        )
    if policy.refuse_burned_in:
        for pos, d in enumerate(cleaned, start=1):
            if d is not None and d.burned_in_annotation:
                raise PredictRejected(
                    422,
                    f"image {pos} is marked BurnedInAnnotation=YES (text in its pixels may "
                    "identify the patient): this site refuses such images for analysis",
                )
    data = [d.data if d is not None else u for d, u in zip(cleaned, uploads, strict=True)]
    return data, cleaned, next(iter(keys), None)


@functools.cache
def _shadow_pool() -> ThreadPoolExecutor:
    # One worker: shadow runs queue behind each other and never compete with replies for more
    # than one core.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")


def _run_shadow(
    registry: ModelServing[V],
    sessions: sessionmaker[Session],
    shadow: V,
    served_version: str,
    prepared: PreparedImages,
    served: Sequence[ClassifiedImage],
    preds: Sequence[Prediction],
) -> None:
    """Run the shadow version on the inputs the served version answered; store the comparison.
    Best effort: a failure is logged, never surfaced to the clinician."""
    try:
        with registry.lease(shadow) as model:
            outs = ImageClassificationTask(model).run(
                dataclasses.replace(prepared, explain=False, method=ExplainMethod.GRADCAM)
            )
        labels = shadow.manifest.labels
        comparisons = [
            ShadowComparison(
                prediction_id=p.id,
                served_label=p.top_label,
                shadow_label=labels[int(out.top)],
                served_ms=a.inference_ms,
                shadow_ms=round(out.run_ms / out.batch_size, 3),
            )
            for a, p, out in zip(served, preds, outs, strict=True)
        ]
        with sessions() as db:
            record_shadow(
                db=db,
                name=shadow.manifest.name,
                served_version=served_version,
                shadow_version=shadow.manifest.version,
                comparisons=comparisons,
            )
    except Exception:
        log.exception("shadow run of %s failed", shadow.manifest.ref)


@contextmanager
def refusals(metrics: Metrics | None, db: Session, ctx: audit.RequestContext) -> Iterator[None]:
    """Around the steps before anything is stored: a domain error raised there is counted,
    audited and re-raised as PredictRejected with its status."""
    try:
        yield
    except PredictRejected as exc:
        reject(metrics, db, ctx, exc.status_code, exc.detail)
        raise
    except ClearScanError as exc:
        reject(metrics, db, ctx, exc.status_code, exc.detail)
        raise PredictRejected(exc.status_code, exc.detail) from None


def reject(
    metrics: Metrics | None, db: Session, ctx: audit.RequestContext, status: int, detail: str
) -> None:
    """Count and audit a refused analysis."""
    if metrics is not None:
        metrics.rejected.labels(str(status)).inc()
    audit.record(
        audit.Entry(
            Action.PREDICT, outcome="rejected", details={"status": status, "reason": detail[:500]}
        ),
        db=db,
        ctx=ctx,
    )
