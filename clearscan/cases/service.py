"""Analyses and cases: decode uploads, run the model, persist case / image / prediction rows with
their blobs and audit events in one transaction; list, read and review them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, exists, func, insert, select
from sqlalchemy.orm import Session, selectinload

from clearscan.audit import service as audit
from clearscan.auth.models import User
from clearscan.cases.models import Case, Image, Prediction, Review, new_id
from clearscan.db.base import Base, utcnow
from clearscan.imaging import DecodedImage, ImagingError, Limits, decode
from clearscan.inference.heatmap import encode_heatmap
from clearscan.inference.preprocess import preprocess
from clearscan.inference.runtime import Model
from clearscan.registry.manifest import ModelManifest
from clearscan.storage import BlobStore


class CaseError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(CaseError):
    status_code = 404


class IncompatibleImage(CaseError):
    status_code = 422


class InvalidReview(CaseError):
    status_code = 422


@dataclass
class Analysis:
    data: bytes
    image: DecodedImage
    probabilities: list[float]
    top_index: int
    box: tuple[int, int, int, int]
    heatmap_png: bytes | None
    inference_ms: float
    tensor: np.ndarray  # the model input, kept for a shadow version to see the same thing
    ood_score: float | None = None  # > 1: outside the model's training inputs


def check_compatible(img: DecodedImage, manifest: ModelManifest) -> None:
    accepted = manifest.dicom_modalities
    if img.format == "dicom" and accepted and img.modality and img.modality not in accepted:
        raise IncompatibleImage(
            f"model {manifest.name} accepts DICOM modalities {', '.join(accepted)}; "
            f"this image is {img.modality}"
        )
    min_side = min(16, manifest.image.height, manifest.image.width)
    if min(img.width, img.height) < min_side:
        raise IncompatibleImage(
            f"image is {img.width}x{img.height}; model {manifest.name} needs at least "
            f"{min_side} pixels on each side"
        )


def decode_uploads(
    uploads: Sequence[bytes], manifest: ModelManifest, limits: Limits
) -> list[DecodedImage]:
    """Decode and check every upload before anything runs or is stored. Errors name the file."""
    images = []
    for i, data in enumerate(uploads, 1):
        try:
            img = decode(data, limits=limits)
        except ImagingError as exc:
            raise type(exc)(f"file {i}: {exc.detail}") from None
        try:
            check_compatible(img, manifest)
        except IncompatibleImage as exc:
            raise IncompatibleImage(f"file {i}: {exc.detail}") from None
        images.append(img)
    return images


def analyze(
    uploads: Sequence[bytes],
    images: Sequence[DecodedImage],
    model: Model,
    *,
    explain: bool,
    method: str = "gradcam",
) -> list[Analysis]:
    """Preprocess every image and run them through the version's micro-batcher (concurrent
    requests share model runs; probabilities and the heatmap come from one pass)."""
    spec = model.manifest.image
    prep_ms, prepared = [], []
    for img in images:
        t0 = time.perf_counter()
        prepared.append(preprocess(img.pixels, spec))
        prep_ms.append((time.perf_counter() - t0) * 1000)
    outs = model.batcher(method).predict([p.tensor for p in prepared], explain=explain)
    results = []
    for i, (data, img, prep, out) in enumerate(zip(uploads, images, prepared, outs, strict=True)):
        t0 = time.perf_counter()
        png = encode_heatmap(out.cam) if out.cam is not None else None
        enc_ms = (time.perf_counter() - t0) * 1000
        results.append(
            Analysis(
                data=data,
                image=img,
                probabilities=[round(float(p), 6) for p in out.probabilities],
                top_index=int(out.top),
                box=prep.box,
                heatmap_png=png,
                inference_ms=round(prep_ms[i] + out.run_ms / out.batch_size + enc_ms, 3),
                tensor=prep.tensor,
                ood_score=None if out.ood_score is None else round(out.ood_score, 4),
            )
        )
    return results


def save_case(
    *,
    case_id: str | None = None,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    user: User,
    manifest: ModelManifest,
    analyses: Sequence[Analysis],
    patient_ref: str | None,
    note: str | None,
    explain_method: str | None = None,
) -> tuple[Case, list[Prediction]]:
    now = utcnow()
    case_row: dict[str, Any] = {
        "id": case_id or new_id(),
        "created_at": now,
        "created_by_id": user.id,
        "patient_ref": patient_ref or None,
        "note": note or None,
    }
    case_id = case_row["id"]
    entries = [audit.Entry("case.create", object_type="case", object_id=case_id)]
    payloads = [a.data for a in analyses] + [a.heatmap_png for a in analyses if a.heatmap_png]
    stored = iter(blobs.put_many(payloads))
    digests = [next(stored) for _ in analyses]
    heats = [next(stored) if a.heatmap_png else None for a in analyses]
    image_rows: list[dict[str, Any]] = []
    pred_rows: list[dict[str, Any]] = []
    for pos, a in enumerate(analyses):
        digest, heat = digests[pos], heats[pos]
        img = a.image
        image_rows.append(
            {
                "id": new_id(),
                "case_id": case_id,
                "position": pos,
                "sha256": digest,
                "size_bytes": len(a.data),
                "format": img.format,
                "modality": img.modality,
                "width": img.width,
                "height": img.height,
                "channels": img.channels,
                "bit_depth": img.bit_depth,
                "frames": img.frames,
                "frame_index": img.frame_index,
                "study_uid": img.study_uid,
                "series_uid": img.series_uid,
                "sop_uid": img.sop_uid,
                "created_at": now,
            }
        )
        pred_rows.append(
            {
                "id": new_id(),
                "image_id": image_rows[-1]["id"],
                "case_id": case_id,
                "model_name": manifest.name,
                "model_version": manifest.version,
                "labels": list(manifest.labels),
                "probabilities": a.probabilities,
                "top_label": manifest.labels[a.top_index],
                "heatmap_sha256": heat,
                "heatmap_box": list(a.box) if heat else None,
                "inference_ms": a.inference_ms,
                "details": {
                    **({"explain_method": explain_method} if heat else {}),
                    **({"ood_score": a.ood_score} if a.ood_score is not None else {}),
                },
                "created_at": now,
            }
        )
        entries.append(
            audit.Entry(
                "image.upload",
                object_type="image",
                object_id=image_rows[-1]["id"],
                details={"format": img.format, "bytes": len(a.data)},
            )
        )
        entries.append(
            audit.Entry(
                "prediction.create",
                object_type="prediction",
                object_id=pred_rows[-1]["id"],
                details={"model": manifest.ref, "top_label": pred_rows[-1]["top_label"]},
            )
        )
    # Core inserts: append-only rows need no unit of work (about a third of the ORM's cost).
    db.execute(insert(_table(Case)), [case_row])
    db.execute(insert(_table(Image)), image_rows)
    db.execute(insert(_table(Prediction)), pred_rows)
    case = Case(**case_row)  # detached copies of what was written, for the reply
    predictions = [Prediction(**row) for row in pred_rows]
    audit.append(db, ctx, *entries)
    db.commit()
    return case, predictions


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def list_cases(
    *,
    db: Session,
    limit: int = 20,
    offset: int = 0,
    label: str | None = None,
    username: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[Sequence[Case], int]:
    q = select(Case)
    if label:
        q = q.where(exists().where(Prediction.case_id == Case.id, Prediction.top_label == label))
    if username:
        q = q.join(User, User.id == Case.created_by_id).where(User.username == username)
    if since:
        q = q.where(Case.created_at >= since)
    if until:
        q = q.where(Case.created_at < until)
    total = db.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = db.execute(
        q.options(selectinload(Case.images).selectinload(Image.predictions))
        .order_by(Case.created_at.desc(), Case.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return rows.all(), total


def get_case(*, db: Session, case_id: str) -> Case:
    case = db.execute(
        select(Case)
        .where(Case.id == case_id)
        .options(
            selectinload(Case.images)
            .selectinload(Image.predictions)
            .selectinload(Prediction.reviews)
        )
    ).scalar_one_or_none()
    if case is None:
        raise NotFound(f"case {case_id} not found")
    return case


def get_image(*, db: Session, image_id: str) -> Image:
    image = db.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    return image


def get_prediction(*, db: Session, prediction_id: str) -> Prediction:
    pred = db.get(Prediction, prediction_id)
    if pred is None:
        raise NotFound(f"prediction {prediction_id} not found")
    return pred


def add_review(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    prediction: Prediction,
    agree: bool,
    correct_label: str | None,
    comment: str | None,
) -> Review:
    if agree:
        if correct_label not in (None, "", prediction.top_label):
            raise InvalidReview("an agreeing review cannot name a different label")
        correct_label = prediction.top_label
    else:
        if not correct_label:
            raise InvalidReview("a disagreeing review must give correct_label")
        if correct_label not in prediction.labels:
            raise InvalidReview(
                f"correct_label {correct_label!r} is not one of {', '.join(prediction.labels)}"
            )
    review = Review(
        prediction_id=prediction.id,
        user_id=user.id,
        agree=agree,
        correct_label=correct_label,
        comment=(comment or None),
    )
    db.add(review)
    db.flush()
    audit.append(
        db,
        ctx,
        audit.Entry(
            "review.create",
            object_type="prediction",
            object_id=prediction.id,
            details={"review_id": review.id, "agree": agree},
        ),
    )
    db.commit()
    return review


def usernames(*, db: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.execute(select(User.id, User.username).where(User.id.in_(ids))).all()
    return {uid: name for uid, name in rows}
