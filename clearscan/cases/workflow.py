"""The analysis workflow shared by the API, the web pages and the CLI: resolve the model, decode
and check every upload, run the model once for the batch, persist, count, audit. A rejection
stores nothing and is audited."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.auth.models import User
from clearscan.cases import service
from clearscan.cases.models import Case, Prediction
from clearscan.imaging import ImagingError
from clearscan.inference.runtime import EXPLAIN_METHODS
from clearscan.registry.service import RegistryError
from clearscan.state import AppState


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
        entry, model = state.registry.runnable(model_name or state.settings.default_model)
        images = service.decode_uploads(uploads, entry.manifest, state.limits)
        if explain_method not in EXPLAIN_METHODS:
            raise PredictRejected(
                422, f"explain_method must be one of {', '.join(EXPLAIN_METHODS)}"
            )
        analyses = service.analyze(uploads, images, model, explain=explain, method=explain_method)
    except (ImagingError, service.CaseError, RegistryError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        _reject(state, db, ctx, exc.status_code, detail)
        raise PredictRejected(exc.status_code, detail) from None
    except PredictRejected as exc:
        _reject(state, db, ctx, exc.status_code, exc.detail)
        raise
    case, preds = service.save_case(
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
    return case, preds


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
