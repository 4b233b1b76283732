"""Prediction, case, image, heatmap and review endpoints."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BeforeValidator

from clearscan.api.deps import AnyUser, ClinicianUser, Offset, SessionDep, StateDep, request_context
from clearscan.api.errors import error_responses
from clearscan.api.responses import PHIResponse
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.cases import service
from clearscan.cases.features import predict_features
from clearscan.cases.schemas import (
    CaseDetail,
    CaseList,
    CaseSummary,
    PredictionPublic,
    PredictResponse,
    ReviewCreate,
    ReviewPublic,
)
from clearscan.cases.workflow import PredictRejected, predict_images
from clearscan.imaging import decode, render_png

router = APIRouter(tags=["cases"])
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _not_a_number(value: object) -> object:
    """Refuse a bare number, which pydantic would read as a Unix time (``until=0.5``)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        raise ValueError("an ISO 8601 date-time expected, not a number")
    return value


def _utc(value: datetime | None) -> datetime | None:
    """A date-time without an offset is taken as UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


DateTimeQuery = Annotated[
    datetime | None,
    BeforeValidator(_not_a_number),
    AfterValidator(_utc),
    Query(description="ISO 8601 date-time (UTC unless it has an offset)"),
]


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Analyse one or more images (multipart), or feature values (JSON)",
    description="Images: multipart/form-data with one or more `file` parts. Tabular models: "
    'Content-Type application/json with `{"model": NAME, "features": {NAME: VALUE, ...}, '
    '"patient_ref"?, "note"?}`; the reply has `contributions` instead of a heatmap.',
    responses=error_responses(404, 415, 503),
)
async def predict_endpoint(
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: ClinicianUser,
    file: Annotated[list[UploadFile] | None, File(description="one or more images")] = None,
    model: Annotated[str | None, Form(max_length=128)] = None,
    explain: Annotated[bool, Form()] = True,
    explain_method: Annotated[
        str, Form(max_length=16, description="gradcam (default) or gradcam++")
    ] = "gradcam",
    patient_ref: Annotated[str | None, Form(max_length=128)] = None,
    note: Annotated[str | None, Form(max_length=4000)] = None,
) -> PredictResponse:
    ctx = request_context(request, user.username)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise PredictRejected(422, "the body is not valid JSON") from None
        case, preds = await run_in_threadpool(
            predict_features,
            db=db,
            ctx=ctx,
            user=user,
            registry=state.registry,
            blobs=state.blobs,
            default_model=state.settings.default_model,
            metrics=state.metrics,
            body=body,
        )
    else:
        uploads = [await f.read() for f in file or []]
        case, preds = await run_in_threadpool(
            predict_images,
            db=db,
            ctx=ctx,
            user=user,
            registry=state.registry,
            blobs=state.blobs,
            limits=state.limits,
            max_files=state.settings.max_files_per_request,
            default_model=state.settings.default_model,
            sessions=state.sessions,
            metrics=state.metrics,
            uploads=uploads,
            model_name=model,
            explain=explain,
            explain_method=explain_method,
            patient_ref=patient_ref,
            note=note,
            shadow_queue=state.jobs,
        )
    return PredictResponse(case_id=case.id, predictions=[PredictionPublic.of(p) for p in preds])


@router.get("/cases", response_model=CaseList)
def list_cases(
    db: SessionDep,
    user: AnyUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Offset = 0,
    label: Annotated[str | None, Query(max_length=128)] = None,
    user_: Annotated[str | None, Query(alias="user", max_length=64)] = None,
    since: DateTimeQuery = None,
    until: DateTimeQuery = None,
) -> CaseList:
    rows, total = service.list_cases(
        db=db, limit=limit, offset=offset, label=label, username=user_, since=since, until=until
    )
    names = service.usernames(db=db, ids={c.created_by_id for c in rows})
    return CaseList(items=[CaseSummary.of(c, names) for c in rows], total=total)


@router.get("/cases/{case_id}", response_model=CaseDetail)
def get_case(case_id: str, request: Request, db: SessionDep, user: AnyUser) -> CaseDetail:
    case = service.get_case(db=db, case_id=case_id)
    ids = {case.created_by_id} | {
        r.user_id for im in case.images for p in im.predictions for r in p.reviews
    }
    detail = CaseDetail.of_detail(case, service.usernames(db=db, ids=ids))
    audit.record(
        audit.Entry(Action.CASE_VIEW, object_type="case", object_id=case.id),
        db=db,
        ctx=request_context(request, user.username),
    )
    return detail


@router.post(
    "/predictions/{prediction_id}/review",
    response_model=ReviewPublic,
    status_code=201,
    responses=error_responses(409),
)
def review(
    prediction_id: str, body: ReviewCreate, request: Request, db: SessionDep, user: ClinicianUser
) -> ReviewPublic:
    r = service.add_review(
        db=db,
        ctx=request_context(request, user.username),
        user=user,
        prediction=service.get_prediction(db=db, prediction_id=prediction_id),
        agree=body.agree,
        correct_label=body.correct_label,
        comment=body.comment,
    )
    return ReviewPublic.of(r, {user.id: user.username})


@router.get("/images/{image_id}/file", response_class=Response, summary="The original upload")
def image_file(
    image_id: str, request: Request, db: SessionDep, state: StateDep, user: AnyUser
) -> Response:
    image = service.get_image(db=db, image_id=image_id)
    data = state.blobs.get(image.sha256)
    audit.record(
        audit.Entry(
            Action.IMAGE_VIEW, object_type="image", object_id=image.id, details={"as": "file"}
        ),
        db=db,
        ctx=request_context(request, user.username),
    )
    media = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
    ext = {"png": "png", "jpeg": "jpg", "dicom": "dcm", "nifti": "nii"}
    name = f"{image.id}.{ext.get(image.format, 'bin')}"
    if image.format == "nifti" and data[:2] == b"\x1f\x8b":
        name += ".gz"
    return PHIResponse(
        data,
        media_type=media.get(image.format, "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/images/{image_id}/preview.png",
    response_class=Response,
    summary="The image rendered as PNG, optionally with a window/level preset",
    responses=error_responses(413, 415),
)
def image_preview(
    image_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    preset: Annotated[str | None, Query(max_length=32)] = None,
    max_side: Annotated[int, Query(ge=64, le=4096)] = 1024,
) -> Response:
    image = service.get_image(db=db, image_id=image_id)
    data = state.blobs.get(image.sha256)
    img = decode(data, limits=state.limits, frame=image.frame_index if image.frames > 1 else None)
    png = render_png(img, preset=preset, max_side=max_side)
    audit.record(
        audit.Entry(
            Action.IMAGE_VIEW,
            object_type="image",
            object_id=image.id,
            details={"as": "preview", "preset": preset},
        ),
        db=db,
        ctx=request_context(request, user.username),
    )
    return PHIResponse(png, media_type="image/png")


@router.get(
    "/predictions/{prediction_id}/heatmap.png",
    response_class=Response,
    summary="Grad-CAM heatmap (RGBA PNG at the model's native resolution)",
)
def heatmap(prediction_id: str, db: SessionDep, state: StateDep, user: AnyUser) -> Response:
    pred = service.get_prediction(db=db, prediction_id=prediction_id)
    if not pred.heatmap_sha256:
        raise service.NotFound(f"prediction {prediction_id} has no heatmap (explain was off)")
    return PHIResponse(state.blobs.get(pred.heatmap_sha256), media_type="image/png")
