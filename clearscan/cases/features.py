"""Predictions from feature values (tabular scikit-learn models): `POST /api/v1/predict` with a
JSON body `{"model", "features": {...}}`. Same case / prediction rows and reply as images: the
"image" row holds the submitted values (a JSON blob, format `features`) and the prediction
carries per-feature contributions instead of a heatmap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.auth.models import User
from clearscan.cases import service
from clearscan.cases.models import Case, Prediction, new_id
from clearscan.cases.workflow import ModelServing, PredictRejected, V, refusals
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.tasks import (
    TabularClassificationTask,
    TabularRequest,
    TaskKind,
    task_kind,
)
from clearscan.storage import BlobStore
from clearscan.teams import service as teams

if TYPE_CHECKING:
    from clearscan.observability.metrics import Metrics

MAX_FEATURES = 10_000


def _window_features(m: ModelManifest, window: Any) -> dict[str, float]:
    """A sensor-stream model's features from raw samples, computed as at training."""
    from clearscan.training.features import WindowError, feature_names, window_from_json

    if m.window is None:
        raise PredictRejected(422, f"model {m.ref} takes feature values, not a window")
    w = m.window
    try:
        feats = window_from_json(window, w.channels, w.length, w.sample_rate)
    except WindowError as exc:
        raise PredictRejected(422, str(exc)) from None
    return {n: float(v) for n, v in zip(feature_names(w.channels), feats, strict=True)}


def predict_features(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    registry: ModelServing[V],
    blobs: BlobStore,
    default_model: str,
    metrics: Metrics | None = None,
    body: Any,
) -> tuple[Case, list[Prediction]]:
    """Predict from the JSON `body` ({"model", "features" or "window", "patient_ref"?,
    "note"?, "team"?}) and store the case in the user's team (`team` names one of several).
    PredictRejected (audited, nothing stored) when refused."""
    with refusals(metrics, db, ctx):
        if not isinstance(body, dict):
            raise PredictRejected(422, 'send a JSON object: {"model": ..., "features": {...}}')
        team = body.get("team")
        if team is not None and (not isinstance(team, str) or len(team) > 64):
            raise PredictRejected(422, "team must be a team name")
        team_id = teams.team_for_new_row(db=db, user=user, team=team)
        name = body.get("model") or default_model
        values = body.get("features")
        window = body.get("window")
        if not isinstance(name, str) or len(name) > 128:
            raise PredictRejected(422, "model must be a model name")
        if window is None and (not isinstance(values, dict) or not values):
            raise PredictRejected(
                422,
                "features must be an object of feature name -> value (or, for sensor-stream "
                'models, window: {"channel": [samples...]})',
            )
        if isinstance(values, dict) and len(values) > MAX_FEATURES:
            raise PredictRejected(413, f"at most {MAX_FEATURES} features")
        patient_ref, note = body.get("patient_ref"), body.get("note")
        for field, value, cap in (("patient_ref", patient_ref, 128), ("note", note, 4000)):
            if value is not None and (not isinstance(value, str) or len(value) > cap):
                raise PredictRejected(422, f"{field} must be a string of at most {cap} characters")
        case_id = new_id()
        with registry.serve(name, case_id) as (entry, model):
            m = entry.manifest
            if task_kind(m) is not TaskKind.TABULAR_CLASSIFICATION:
                raise PredictRejected(
                    422, f"model {m.ref} takes images: upload them as multipart 'file' parts"
                )
            if window is not None:
                values = _window_features(m, window)
            if not isinstance(values, dict):
                raise PredictRejected(422, "features must be an object of feature name -> value")
            result = TabularClassificationTask(model)(TabularRequest(values=values))
    case, pred = service.save_tabular_case(
        case_id=case_id,
        db=db,
        blobs=blobs,
        ctx=ctx,
        user=user,
        manifest=m,
        values=values,
        window=window,
        result=result,
        patient_ref=patient_ref,
        note=note,
        team_id=team_id,
    )
    if metrics is not None:
        metrics.observe_prediction(
            model=pred.model_name,
            version=pred.model_version,
            label=pred.top_label,
            seconds=pred.inference_ms / 1000,
            ood_score=result.ood_score,
        )
    return case, [pred]
