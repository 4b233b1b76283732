"""Prediction, case, image, heatmap and review endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from clearscan.api.deps import (
    AdminUser,
    AnyUser,
    ClinicianUser,
    DateTimeQuery,
    Offset,
    SessionDep,
    StateDep,
    TeamScope,
    request_context,
)
from clearscan.api.errors import error_responses
from clearscan.api.responses import PHIResponse
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.cases import dicom_exports, service
from clearscan.cases.features import predict_features
from clearscan.cases.models import Case, Image
from clearscan.cases.schemas import (
    CaseDetail,
    CaseList,
    CaseSummary,
    FindingReviewCreate,
    FindingReviewPublic,
    PredictionPublic,
    PredictResponse,
    ReviewCreate,
    ReviewPublic,
)
from clearscan.cases.workflow import PredictRejected, predict_images
from clearscan.imaging import decode, render_png

router = APIRouter(tags=["cases"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Analyse one or more images (multipart), or feature values (JSON)",
    description="Images: multipart/form-data with one or more `file` parts. Tabular models: "
    'Content-Type application/json with `{"model": NAME, "features": {NAME: VALUE, ...}, '
    '"patient_ref"?, "note"?, "team"?}`; the reply has `contributions` instead of a heatmap. '
    "The case belongs to the user's team; a user in several teams names one in `team`, and a "
    "user in no team cannot create cases (422).",
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
    team: Annotated[
        str | None, Form(max_length=64, description="the case's team, for a user in several")
    ] = None,
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
            deid=state.settings.deid_policy(),
            admission=state.analyses,
            team=team or None,
        )
    return PredictResponse(case_id=case.id, predictions=[PredictionPublic.of(p) for p in preds])


@router.get("/cases", response_model=CaseList)
def list_cases(
    request: Request,
    db: SessionDep,
    user: AnyUser,
    scope: TeamScope,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Offset = 0,
    label: Annotated[str | None, Query(max_length=128)] = None,
    user_: Annotated[str | None, Query(alias="user", max_length=64)] = None,
    since: DateTimeQuery = None,
    until: DateTimeQuery = None,
    patient_key: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-f]{64}$",
            description="one patient's cases: the pseudonymous key a case carries",
        ),
    ] = None,
) -> CaseList:
    rows, total = service.list_cases(
        db=db,
        scope=scope,
        limit=limit,
        offset=offset,
        label=label,
        username=user_,
        since=since,
        until=until,
        patient_key=patient_key,
    )
    names = service.usernames(db=db, ids={c.created_by_id for c in rows})
    filters = {"label": label, "user": user_, "since": since, "until": until}
    audit.record(
        audit.case_list_entry(
            filters, patient_key=patient_key is not None, offset=offset, rows=len(rows), total=total
        ),
        db=db,
        ctx=request_context(request, user.username),
    )
    return CaseList(items=[CaseSummary.of(c, names) for c in rows], total=total)


@router.get("/cases/{case_id}", response_model=CaseDetail)
def get_case(
    case_id: str, request: Request, db: SessionDep, user: AnyUser, scope: TeamScope
) -> CaseDetail:
    case = service.get_case(db=db, case_id=case_id, scope=scope)
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
    prediction_id: str,
    body: ReviewCreate,
    request: Request,
    db: SessionDep,
    user: ClinicianUser,
    scope: TeamScope,
) -> ReviewPublic:
    r = service.add_review(
        db=db,
        ctx=request_context(request, user.username),
        user=user,
        prediction=service.get_prediction(db=db, prediction_id=prediction_id, scope=scope),
        agree=body.agree,
        correct_label=body.correct_label,
        comment=body.comment,
    )
    return ReviewPublic.of(r, {user.id: user.username})


@router.post(
    "/predictions/{prediction_id}/findings/{finding}/review",
    response_model=FindingReviewPublic,
    status_code=201,
    summary="Accept or reject one finding (a stenosis of a segmentation's QCA) with a comment",
)
def finding_review(
    prediction_id: str,
    finding: Annotated[int, Path(ge=0, le=10_000)],
    body: FindingReviewCreate,
    request: Request,
    db: SessionDep,
    user: ClinicianUser,
    scope: TeamScope,
) -> FindingReviewPublic:
    r = service.add_finding_review(
        db=db,
        ctx=request_context(request, user.username),
        user=user,
        prediction=service.get_prediction(db=db, prediction_id=prediction_id, scope=scope),
        finding=finding,
        accept=body.accept,
        comment=body.comment,
    )
    return FindingReviewPublic.of(r, {user.id: user.username})


@router.get("/images/{image_id}/file", response_class=Response, summary="The original upload")
def image_file(
    image_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
) -> Response:
    image = service.get_image(db=db, image_id=image_id, scope=scope)
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
    "/images/{image_id}/original",
    response_class=Response,
    summary="The DICOM upload as received, before de-identification (admins; audited)",
    description="Only where the site keeps originals (CLEARSCAN_KEEP_ORIGINALS); everyone else, "
    "and `/file`, get the de-identified bytes. 404 when no original was kept.",
)
def image_original(
    image_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AdminUser,
    scope: TeamScope,
) -> Response:
    image = service.get_image(db=db, image_id=image_id, scope=scope)
    original = service.get_original(db=db, image=image)
    data = state.blobs.get(original.sha256)
    audit.record(
        audit.Entry(
            Action.IMAGE_ORIGINAL_VIEW,
            object_type="image",
            object_id=image.id,
            details={"bytes": len(data)},
        ),
        db=db,
        ctx=request_context(request, user.username),
    )
    return PHIResponse(
        data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{image.id}.original.dcm"'},
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
    scope: TeamScope,
    preset: Annotated[str | None, Query(max_length=32)] = None,
    max_side: Annotated[int, Query(ge=64, le=4096)] = 1024,
) -> Response:
    image = service.get_image(db=db, image_id=image_id, scope=scope)
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


def _prediction_png(
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
    prediction_id: str,
    kind: Literal["heatmap", "mask"],
) -> Response:
    """A prediction's stored PNG (its heatmap or its label map), audited as its view."""
    pred = service.get_prediction(db=db, prediction_id=prediction_id, scope=scope)
    digest = pred.heatmap_sha256 if kind == "heatmap" else pred.mask_sha256
    if not digest:
        why = "heatmap (explain was off)" if kind == "heatmap" else "mask (not a segmentation)"
        raise service.NotFound(f"prediction {prediction_id} has no {why}")
    data = state.blobs.get(digest)
    action = Action.HEATMAP_VIEW if kind == "heatmap" else Action.MASK_VIEW
    audit.record(
        audit.Entry(action, object_type="prediction", object_id=pred.id),
        db=db,
        ctx=request_context(request, user.username),
    )
    return PHIResponse(data, media_type="image/png")


@router.get(
    "/predictions/{prediction_id}/heatmap.png",
    response_class=Response,
    summary="Grad-CAM heatmap (RGBA PNG at the model's native resolution)",
)
def heatmap(
    prediction_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
) -> Response:
    return _prediction_png(request, db, state, user, scope, prediction_id, "heatmap")


@router.get(
    "/predictions/{prediction_id}/mask.png",
    response_class=Response,
    summary="Segmentation label map (8-bit PNG at the image's resolution; value = class index)",
)
def mask(
    prediction_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
) -> Response:
    return _prediction_png(request, db, state, user, scope, prediction_id, "mask")


_DICOM_PARTS = {
    "seg": ("segmentation.dcm", "DICOM Segmentation (LABELMAP) of a segmentation's label map"),
    "sr": ("report.dcm", "DICOM Structured Report (TID 1500) of a segmentation's QCA measurements"),
    "sc": (
        "secondary-capture.dcm",
        "DICOM Secondary Capture of a non-DICOM upload (the image the SEG and SR reference)",
    ),
}


def _dicom_route(part: dicom_exports.Part) -> None:
    path, summary = _DICOM_PARTS[part]

    @router.get(
        f"/predictions/{{prediction_id}}/{path}",
        response_class=Response,
        summary=summary,
        name=f"prediction_{part}",
    )
    def get_part(
        prediction_id: str,
        request: Request,
        db: SessionDep,
        state: StateDep,
        user: AnyUser,
        scope: TeamScope,
    ) -> Response:
        pred = service.get_prediction(db=db, prediction_id=prediction_id, scope=scope)
        case = db.get(Case, pred.case_id)
        image = db.get(Image, pred.image_id)
        assert case is not None and image is not None  # foreign keys
        made = dicom_exports.export(
            blobs=state.blobs, case=case, image=image, pred=pred, part=part, limits=state.limits
        )
        audit.record(
            audit.Entry(
                Action.DICOM_EXPORT,
                object_type="prediction",
                object_id=pred.id,
                details={"object": part},
            ),
            db=db,
            ctx=request_context(request, user.username),
        )
        return PHIResponse(
            made.data,
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="{made.filename}"'},
        )


for _part in ("seg", "sr", "sc"):
    _dicom_route(_part)
