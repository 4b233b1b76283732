"""The analysis workflow shared by the API, the web pages and the CLI: resolve the model, decode
and check every upload, run the model once for the batch, persist, count, audit. A rejection
stores nothing and is audited."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.auth.models import User
from clearscan.cases import service
from clearscan.cases.models import Case, Prediction, new_id
from clearscan.imaging import ImagingError
from clearscan.inference.runtime import EXPLAIN_METHODS
from clearscan.registry.models import ShadowResult
from clearscan.registry.service import ModelEntry, RegistryError
from clearscan.state import AppState

log = logging.getLogger(__name__)


class PredictRejected(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def predict(
    *,
    state: AppState,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    uploads: Sequence[bytes],
    model_name: str | None,
    explain: bool,
    explain_method: str = "gradcam",
    patient_ref: str | None,
    note: str | None,
) -> tuple[Case, list[Prediction]]:
    try:
        if not uploads:
            raise PredictRejected(422, "no file uploaded: send one or more 'file' parts")
        if len(uploads) > state.settings.max_files_per_request:
            raise PredictRejected(
                413, f"too many files: at most {state.settings.max_files_per_request} per request"
            )
        name = model_name or state.settings.default_model
        case_id = new_id()
        if explain_method not in EXPLAIN_METHODS:
            raise PredictRejected(
                422, f"explain_method must be one of {', '.join(EXPLAIN_METHODS)}"
            )
        # the canary share is decided per case; the version stays loaded while it is used
        with state.registry.serve(name, case_id) as (entry, model):
            if entry.manifest.tabular:
                raise PredictRejected(
                    422,
                    f"model {entry.manifest.ref} takes feature values: POST JSON "
                    '{"model": ..., "features": {...}} with Content-Type application/json',
                )
            images = service.decode_uploads(uploads, entry.manifest, state.limits)
            analyses = service.analyze(
                uploads, images, model, explain=explain, method=explain_method
            )
    except (ImagingError, service.CaseError, RegistryError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        _reject(state, db, ctx, exc.status_code, detail)
        raise PredictRejected(exc.status_code, detail) from None
    except PredictRejected as exc:
        _reject(state, db, ctx, exc.status_code, exc.detail)
        raise
    case, preds = service.save_case(
        case_id=case_id,
        db=db,
        blobs=state.blobs,
        ctx=ctx,
        user=user,
        manifest=entry.manifest,
        analyses=analyses,
        patient_ref=patient_ref,
        note=note,
        explain_method=explain_method if explain else None,
    )
    m = state.metrics
    for p in preds:
        m.predictions.labels(p.model_name, p.model_version, p.top_label).inc()
        m.inference.labels(p.model_name, p.model_version).observe(p.inference_ms / 1000)
    shadow = state.registry.shadow_of(name)
    if shadow is not None and shadow.manifest.version != entry.manifest.version:
        _shadow_pool().submit(_run_shadow, state, shadow, entry.manifest.version, analyses, preds)
    return case, preds


@functools.cache
def _shadow_pool() -> ThreadPoolExecutor:
    # One worker: shadow runs queue behind each other and never compete with replies for more
    # than one core.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")


def _run_shadow(
    state: AppState,
    shadow: ModelEntry,
    served_version: str,
    analyses: Sequence[service.Analysis],
    preds: Sequence[Prediction],
) -> None:
    """Run the shadow version on the inputs the served version answered; store the comparison.
    Best effort: a failure is logged, never surfaced to the clinician."""
    try:
        with state.registry.lease(shadow) as model:
            outs = model.batcher().predict([a.tensor for a in analyses], explain=False)
        labels = shadow.manifest.labels
        with state.sessions() as db:
            for a, p, out in zip(analyses, preds, outs, strict=True):
                db.add(
                    ShadowResult(
                        model_name=shadow.manifest.name,
                        served_version=served_version,
                        shadow_version=shadow.manifest.version,
                        prediction_id=p.id,
                        served_label=p.top_label,
                        shadow_label=labels[int(out.top)],
                        served_ms=a.inference_ms,
                        shadow_ms=round(out.run_ms / out.batch_size, 3),
                    )
                )
            db.commit()
    except Exception:
        log.exception("shadow run of %s failed", shadow.manifest.ref)


def _reject(
    state: AppState, db: Session, ctx: audit.RequestContext, status: int, detail: str
) -> None:
    state.metrics.rejected.labels(str(status)).inc()
    audit.record(
        db,
        ctx,
        audit.Entry(
            "predict", outcome="rejected", details={"status": status, "reason": detail[:500]}
        ),
    )
