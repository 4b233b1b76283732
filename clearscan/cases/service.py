"""Cases: persist an analysis (case / image / prediction rows with their blobs and audit events in
one transaction); list, read and review them. The analysis itself is an inference task
(`clearscan.inference.tasks`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, exists, func, insert, select
from sqlalchemy.orm import Session, selectinload

from clearscan import errors
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth.models import User
from clearscan.cases.models import (
    Case,
    FindingReview,
    Image,
    OriginalImage,
    Prediction,
    Review,
    new_id,
)
from clearscan.cases.schemas import CaseDetail, CaseSummary
from clearscan.db.base import Base, utcnow
from clearscan.imaging.deid import Deidentified
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.tasks import ClassifiedImage, SegmentedImage, TabularResponse
from clearscan.storage import BlobStore
from clearscan.teams import service as teams
from clearscan.teams.service import Scope


class CaseError(errors.Invalid):
    """Domain errors of cases (400 unless a subclass says otherwise)."""


class NotFound(errors.NotFound, CaseError):
    pass


class InvalidReview(errors.Unprocessable, CaseError):
    pass


def save_case(
    *,
    case_id: str | None = None,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    user: User,
    manifest: ModelManifest,
    uploads: Sequence[bytes],
    results: Sequence[ClassifiedImage | SegmentedImage],
    patient_ref: str | None,
    note: str | None,
    explain_method: str | None = None,
    team_id: int | None = None,
    patient_key: str | None = None,
    deid: Sequence[Deidentified | None] = (),
) -> tuple[Case, list[Prediction]]:
    """Store the uploads and heatmaps, then write the case (of team `team_id`; None: the team
    general), one image and one prediction row per upload (`results[i]` is the analysis of
    `uploads[i]`) and their audit events; commit."""
    now = utcnow()
    if team_id is None:
        team_id = teams.default_team_id(db=db)
    case_row: dict[str, Any] = {
        "id": case_id or new_id(),
        "created_at": now,
        "created_by_id": user.id,
        "team_id": team_id,
        "patient_ref": patient_ref or None,
        "note": note or None,
        "patient_key": patient_key,
    }
    case_id = case_row["id"]
    entries = [audit.Entry(Action.CASE_CREATE, object_type="case", object_id=case_id)]
    if len(uploads) != len(results):
        raise ValueError(f"{len(uploads)} uploads but {len(results)} results")
    extras = [_picture(a) for a in results]  # a heatmap or a label map, per result
    payloads = [*uploads, *(x for x in extras if x)]
    stored = iter(blobs.put_many(payloads))
    digests = [next(stored) for _ in results]
    pictures = [next(stored) if x else None for x in extras]
    image_rows: list[dict[str, Any]] = []
    pred_rows: list[dict[str, Any]] = []
    for pos, (data, a) in enumerate(zip(uploads, results, strict=True)):
        digest = digests[pos]
        img = a.image
        image_rows.append(
            {
                "id": new_id(),
                "case_id": case_id,
                "position": pos,
                "sha256": digest,
                "size_bytes": len(data),
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
                "burned_in_annotation": _burned_in(deid, pos),
                "created_at": now,
            }
        )
        row = {
            "id": new_id(),
            "image_id": image_rows[-1]["id"],
            "case_id": case_id,
            "model_name": manifest.name,
            "model_version": manifest.version,
            "labels": list(manifest.labels),
            "inference_ms": a.inference_ms,
            "heatmap_sha256": None,
            "heatmap_box": None,
            "mask_sha256": None,
            "created_at": now,
        }
        if isinstance(a, SegmentedImage):
            row.update(_segmentation_fields(a, pictures[pos]))
        else:
            heat = pictures[pos]
            row.update(
                probabilities=a.probabilities,
                top_label=a.top_label,
                heatmap_sha256=heat,
                heatmap_box=list(a.box) if heat else None,
                details={
                    **({"explain_method": explain_method} if heat else {}),
                    **({"ood_score": a.ood_score} if a.ood_score is not None else {}),
                },
            )
        pred_rows.append(row)
        entries.append(
            audit.Entry(
                Action.IMAGE_UPLOAD,
                object_type="image",
                object_id=image_rows[-1]["id"],
                details={"format": img.format, "bytes": len(data)},
            )
        )
        entries.append(
            audit.Entry(
                Action.PREDICTION_CREATE,
                object_type="prediction",
                object_id=pred_rows[-1]["id"],
                details={"model": manifest.ref, "top_label": pred_rows[-1]["top_label"]},
            )
        )
    # Core inserts: append-only rows need no unit of work (about a third of the ORM's cost).
    db.execute(insert(_table(Case)), [case_row])
    db.execute(insert(_table(Image)), image_rows)
    if originals := _originals(blobs, deid, [r["id"] for r in image_rows], now):
        db.execute(insert(_table(OriginalImage)), originals)
    db.execute(insert(_table(Prediction)), pred_rows)
    case = Case(**case_row)  # detached copies of what was written, for the reply
    predictions = [Prediction(**row) for row in pred_rows]
    audit.append(*entries, db=db, ctx=ctx)
    db.commit()
    return case, predictions


def _picture(result: ClassifiedImage | SegmentedImage) -> bytes | None:
    """The PNG a result stores beside its image: a heatmap, or a segmentation's label map."""
    if isinstance(result, SegmentedImage):
        return result.mask_png
    return result.heatmap_png


def _segmentation_fields(a: SegmentedImage, mask: str | None) -> dict[str, Any]:
    """A segmentation's prediction row: each class's share of the image's pixels as its
    "probability", the most present class other than the background as the top label (the
    background when nothing was found), the label map's blob, and the areas."""
    total = max(1, a.label_map.size)
    found = sum(a.area_px.values())
    shares = [round((total - found) / total, 6)] + [
        round(a.area_px[label] / total, 6) for label in a.labels[1:]
    ]
    top = max(a.labels[1:], key=lambda label: a.area_px[label]) if found else a.labels[0]
    spacing = a.image.spacing
    return {
        "probabilities": shares,
        "top_label": top,
        "mask_sha256": mask,
        "details": {
            "task": "segmentation",
            "area_px": a.area_px,
            "area_mm2": a.area_mm2,
            "pixel_spacing": None if spacing is None else spacing.to_json(),
            "box": list(a.box),
            **({"measurements": a.measurements} if a.measurements else {}),
        },
    }


def save_tabular_case(
    *,
    case_id: str | None = None,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    user: User,
    manifest: ModelManifest,
    values: Mapping[str, Any],
    window: Any = None,
    result: TabularResponse,
    patient_ref: str | None,
    note: str | None,
    team_id: int | None = None,
) -> tuple[Case, Prediction]:
    """Store the submitted values (and sensor window) as a JSON blob, then write the case (of
    team `team_id`), its `features` image row and the prediction with per-feature contributions;
    commit."""
    m = manifest
    feats = m.features or []
    payload = json.dumps(
        {
            "model": m.ref,
            "features": {f.name: values.get(f.name) for f in feats},
            **({"window": window} if window is not None else {}),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = blobs.put(payload)
    if team_id is None:
        team_id = teams.default_team_id(db=db)
    case = Case(
        id=case_id or new_id(),
        created_by_id=user.id,
        team_id=team_id,
        patient_ref=patient_ref or None,
        note=note or None,
    )
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
        {"feature": c.feature, "value": c.value, "contribution": c.contribution}
        for c in result.contributions
    ]
    pred = Prediction(
        image_id=image.id,
        case_id=case.id,
        model_name=m.name,
        model_version=m.version,
        labels=list(m.labels),
        probabilities=list(result.probabilities),
        top_label=result.top_label,
        heatmap_sha256=None,
        heatmap_box=None,
        inference_ms=result.inference_ms,
        details={
            "contributions": contributions,
            **({"ood_score": result.ood_score} if result.ood_score is not None else {}),
        },
    )
    db.add(pred)
    db.flush()
    audit.append(
        audit.Entry(Action.CASE_CREATE, object_type="case", object_id=case.id),
        audit.Entry(
            Action.FEATURES_UPLOAD,
            object_type="image",
            object_id=image.id,
            details={"features": len(feats), "bytes": len(payload)},
        ),
        audit.Entry(
            Action.PREDICTION_CREATE,
            object_type="prediction",
            object_id=pred.id,
            details={"model": m.ref, "top_label": pred.top_label},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return case, pred


def _burned_in(deid: Sequence[Deidentified | None], pos: int) -> bool:
    d = deid[pos] if pos < len(deid) else None
    return d is not None and d.burned_in_annotation


def _originals(
    blobs: BlobStore, deid: Sequence[Deidentified | None], image_ids: list[str], now: datetime
) -> list[dict[str, Any]]:
    """Store the uploads as received where the site keeps originals: rows of original_images."""
    kept = [(i, d.original) for i, d in zip(image_ids, deid, strict=False) if d and d.original]
    digests = blobs.put_many([data for _, data in kept]) if kept else []
    return [
        {"image_id": i, "sha256": h, "size_bytes": len(data), "created_at": now}
        for (i, data), h in zip(kept, digests, strict=True)
    ]


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def list_cases(
    *,
    db: Session,
    scope: Scope | None = None,
    limit: int = 20,
    offset: int = 0,
    label: str | None = None,
    username: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    patient_key: str | None = None,
) -> tuple[Sequence[Case], int]:
    q = select(Case)
    if patient_key:
        q = q.where(Case.patient_key == patient_key)
    if scope is not None:
        q = q.where(scope.where(Case.team_id))
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


def get_case(*, db: Session, case_id: str, scope: Scope | None = None) -> Case:
    """The case with its images, predictions and reviews; NotFound for a missing id and for a
    case `scope` may not see (the same reply)."""
    case = db.execute(
        select(Case)
        .where(Case.id == case_id)
        .options(
            selectinload(Case.images)
            .selectinload(Image.predictions)
            .selectinload(Prediction.reviews),
            selectinload(Case.images)
            .selectinload(Image.predictions)
            .selectinload(Prediction.finding_reviews),
        )
    ).scalar_one_or_none()
    missing = NotFound(f"case {case_id} not found")
    if case is None:
        raise missing
    teams.check(
        db=db,
        scope=scope,
        team_id=case.team_id,
        object_type="case",
        object_id=case.id,
        missing=missing,
    )
    return case


def _case_team(db: Session, case_id: str) -> int | None:
    return db.scalar(select(Case.team_id).where(Case.id == case_id))


def get_image(*, db: Session, image_id: str, scope: Scope | None = None) -> Image:
    """The image; NotFound for a missing id and for an image of a case `scope` may not see."""
    image = db.get(Image, image_id)
    missing = NotFound(f"image {image_id} not found")
    if image is None:
        raise missing
    teams.check(
        db=db,
        scope=scope,
        team_id=_case_team(db, image.case_id),
        object_type="image",
        object_id=image.id,
        missing=missing,
    )
    return image


def get_original(*, db: Session, image: Image) -> OriginalImage:
    """The upload as received (kept where CLEARSCAN_KEEP_ORIGINALS is on); NotFound otherwise."""
    original = db.get(OriginalImage, image.id)
    if original is None:
        raise NotFound(f"image {image.id} has no kept original (only de-identified bytes)")
    return original


def get_prediction(*, db: Session, prediction_id: str, scope: Scope | None = None) -> Prediction:
    """The prediction; NotFound for a missing id and for one of a case `scope` may not see."""
    pred = db.get(Prediction, prediction_id)
    missing = NotFound(f"prediction {prediction_id} not found")
    if pred is None:
        raise missing
    teams.check(
        db=db,
        scope=scope,
        team_id=_case_team(db, pred.case_id),
        object_type="prediction",
        object_id=pred.id,
        missing=missing,
    )
    return pred


def findings(prediction: Prediction) -> list[dict[str, Any]]:
    """The prediction's findings a reviewer can accept or reject: its QCA stenoses."""
    qca = ((prediction.details or {}).get("measurements") or {}).get("vessel-qca") or {}
    return list(qca.get("stenoses") or [])


def add_finding_review(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    prediction: Prediction,
    finding: int,
    accept: bool,
    comment: str | None,
) -> FindingReview:
    """Accept or reject finding `finding` (0-based, most severe first) of the prediction, with a
    comment; audited. NotFound for a finding the prediction does not have."""
    if not 0 <= finding < len(findings(prediction)):
        raise NotFound(f"prediction {prediction.id} has no finding {finding}")
    review = FindingReview(
        prediction_id=prediction.id,
        finding=finding,
        user_id=user.id,
        accept=accept,
        comment=(comment or None),
    )
    db.add(review)
    db.flush()
    audit.append(
        audit.Entry(
            Action.FINDING_REVIEW,
            object_type="prediction",
            object_id=prediction.id,
            details={"review_id": review.id, "finding": finding, "accept": accept},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return review


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
        audit.Entry(
            Action.REVIEW_CREATE,
            object_type="prediction",
            object_id=prediction.id,
            details={"review_id": review.id, "agree": agree},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return review


def usernames(*, db: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.execute(select(User.id, User.username).where(User.id.in_(ids))).all()
    return {uid: name for uid, name in rows}


def list_case_summaries(
    *,
    db: Session,
    scope: Scope | None = None,
    limit: int = 20,
    offset: int = 0,
    label: str | None = None,
    username: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[CaseSummary], int]:
    """One page of :func:`list_cases` as summaries naming their creators, and the total."""
    rows, total = list_cases(
        db=db,
        scope=scope,
        limit=limit,
        offset=offset,
        label=label,
        username=username,
        since=since,
        until=until,
    )
    names = usernames(db=db, ids={c.created_by_id for c in rows})
    return [CaseSummary.of(c, names) for c in rows], total


def view_case(
    *, db: Session, ctx: audit.RequestContext, case_id: str, scope: Scope | None = None
) -> CaseDetail:
    """A case with its images, predictions and reviews, naming who made them (NotFound
    otherwise, and for a case `scope` may not see); the view is audited and committed."""
    case = get_case(db=db, case_id=case_id, scope=scope)
    ids = {case.created_by_id}
    for im in case.images:
        for p in im.predictions:
            ids |= {r.user_id for r in p.reviews} | {r.user_id for r in p.finding_reviews}
    detail = CaseDetail.of_detail(case, usernames(db=db, ids=ids))
    audit.record(
        audit.Entry(Action.CASE_VIEW, object_type="case", object_id=case.id), db=db, ctx=ctx
    )
    return detail
