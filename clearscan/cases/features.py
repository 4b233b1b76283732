"""Predictions from feature values (tabular scikit-learn models): `POST /api/v1/predict` with a
JSON body `{"model", "features": {...}}`. Same case / prediction rows and reply as images: the
"image" row holds the submitted values (a JSON blob, format `features`) and the prediction
carries per-feature contributions instead of a heatmap."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.auth.models import User
from clearscan.cases.models import Case, Image, Prediction, new_id
from clearscan.cases.workflow import PredictRejected, _reject
from clearscan.inference.runtime import ModelLoadError
from clearscan.inference.sklearn_model import SklearnModel
from clearscan.registry.manifest import ModelManifest
from clearscan.registry.service import RegistryError
from clearscan.state import AppState

MAX_FEATURES = 10_000


def coerce(manifest: ModelManifest, values: dict[str, Any]) -> list[Any]:
    """The row in the model's feature order; 422 naming the first problem. Missing or null
    values are allowed (the model's pipeline imputes them)."""
    feats = manifest.features or []
    known = {f.name for f in feats}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PredictRejected(
            422, f"unknown feature(s) for {manifest.ref}: {', '.join(unknown[:10])}"
        )
    row: list[Any] = []
    for f in feats:
        v = values.get(f.name)
        if v is None:
            row.append(math.nan if f.type == "numeric" else None)
        elif f.type == "numeric":
            if isinstance(v, bool) or not isinstance(v, int | float):
                try:
                    v = float(str(v))
                except ValueError:
                    raise PredictRejected(
                        422, f"feature {f.name!r} is numeric; got {str(v)[:40]!r}"
                    ) from None
            if not math.isfinite(float(v)):
                raise PredictRejected(422, f"feature {f.name!r} must be a finite number")
            row.append(float(v))
        else:
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise PredictRejected(422, f"feature {f.name!r} must be a string")
            row.append(str(v))
    return row


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
    state: AppState,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    body: Any,
) -> tuple[Case, list[Prediction]]:
    import numpy as np

    try:
        if not isinstance(body, dict):
            raise PredictRejected(422, 'send a JSON object: {"model": ..., "features": {...}}')
        name = body.get("model") or state.settings.default_model
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
        with state.registry.serve(name, case_id) as (entry, model):
            m = entry.manifest
            if not m.tabular or not isinstance(model, SklearnModel):
                raise PredictRejected(
                    422, f"model {m.ref} takes images: upload them as multipart 'file' parts"
                )
            if window is not None:
                values = _window_features(m, window)
            if not isinstance(values, dict):
                raise PredictRejected(422, "features must be an object of feature name -> value")
            row = coerce(m, values)
            t0 = time.perf_counter()
            try:
                arr = np.array(row, dtype=object)
                probs, top, contrib = model.explain_row(arr)
                ood = model.ood_score(arr)
            except ModelLoadError as exc:  # e.g. a missing value the pipeline cannot impute
                raise PredictRejected(
                    422, f"the model cannot predict from these values: {exc}"[:500]
                ) from None
            ms = (time.perf_counter() - t0) * 1000
    except RegistryError as exc:
        _reject(state, db, ctx, exc.status_code, exc.detail)
        raise PredictRejected(exc.status_code, exc.detail) from None
    except PredictRejected as exc:
        _reject(state, db, ctx, exc.status_code, exc.detail)
        raise
    feats = m.features or []
    assert isinstance(values, dict)
    payload = json.dumps(
        {
            "model": m.ref,
            "features": {f.name: values.get(f.name) for f in feats},
            **({"window": window} if window is not None else {}),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = state.blobs.put(payload)
    case = Case(id=case_id, created_by_id=user.id, patient_ref=patient_ref or None, note=note)
    db.add(case)
    db.flush()
    image = Image(
        case_id=case.id,
        position=0,
        sha256=digest,
        size_bytes=len(payload),
        format="features",
        width=len(feats),
        height=1,
        channels=1,
        bit_depth=0,
    )
    db.add(image)
    db.flush()
    contributions = [
        {"feature": f.name, "value": values.get(f.name), "contribution": c}
        for f, c in zip(feats, contrib, strict=True)
    ]
    pred = Prediction(
        image_id=image.id,
        case_id=case.id,
        model_name=m.name,
        model_version=m.version,
        labels=list(m.labels),
        probabilities=[round(float(p), 6) for p in probs],
        top_label=m.labels[top],
        heatmap_sha256=None,
        heatmap_box=None,
        inference_ms=round(ms, 3),
        details={
            "contributions": contributions,
            **({"ood_score": ood} if ood is not None else {}),
        },
    )
    db.add(pred)
    db.flush()
    audit.append(
        db,
        ctx,
        audit.Entry("case.create", object_type="case", object_id=case.id),
        audit.Entry(
            "features.upload",
            object_type="image",
            object_id=image.id,
            details={"features": len(feats), "bytes": len(payload)},
        ),
        audit.Entry(
            "prediction.create",
            object_type="prediction",
            object_id=pred.id,
            details={"model": m.ref, "top_label": pred.top_label},
        ),
    )
    db.commit()
    mt = state.metrics
    mt.predictions.labels(pred.model_name, pred.model_version, pred.top_label).inc()
    mt.inference.labels(pred.model_name, pred.model_version).observe(pred.inference_ms / 1000)
    return case, [pred]
