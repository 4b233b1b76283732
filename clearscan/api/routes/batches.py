"""Batch endpoints: submit (a ZIP archive, or stored images), list, read, cancel. Thin: each
calls clearscan.batches.service, whose errors the API's one handler answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from clearscan.api.deps import (
    ClinicianUser,
    Offset,
    SessionDep,
    StateDep,
    TeamScope,
    request_context,
)
from clearscan.api.errors import error_responses
from clearscan.batches import service
from clearscan.batches.archive import MAX_ITEMS, ArchiveLimits
from clearscan.batches.schemas import BatchDetail, BatchImagesCreate, BatchList, BatchPublic

router = APIRouter(tags=["batches"])

_STATUS = "^(queued|running|succeeded|failed|cancelled)$"
_JSON_BODY = {
    "requestBody": {
        "content": {"application/json": {"schema": BatchImagesCreate.model_json_schema()}}
    }
}


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


@router.post(
    "/batches",
    response_model=BatchPublic,
    status_code=202,
    summary="Queue a batch: a ZIP archive of images (multipart), or stored images (JSON)",
    description="multipart/form-data: a `file` part holding a ZIP archive of PNG, JPEG, DICOM or "
    f"NIfTI images (at most {MAX_ITEMS} images; each image at most the upload limit "
    "uncompressed), and optional `model` and `explain` fields. Or Content-Type "
    'application/json: `{"images": [IMAGE_ID, ...], "model"?: NAME[:VERSION], "explain"?: '
    "bool}` naming images already stored in cases. Each image becomes a case, as with "
    "`POST /predict`. The reply comes at once (202) with the batch id and a `Location`; an "
    "`Idempotency-Key` header makes a retried request return the batch the first one made.",
    responses=error_responses(404, 409, 415, 503),
    openapi_extra=_JSON_BODY,
)
async def create_batch(
    request: Request,
    response: Response,
    db: SessionDep,
    state: StateDep,
    user: ClinicianUser,
    file: Annotated[UploadFile | None, File(description="a ZIP archive of images")] = None,
    model: Annotated[
        str | None, Form(max_length=128, description="NAME or NAME:VERSION (default model)")
    ] = None,
    explain: Annotated[bool, Form()] = True,
    team: Annotated[
        str | None, Form(max_length=64, description="the batch's team, for a user in several")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=128, description="names one batch"),
    ] = None,
) -> BatchPublic:
    ctx = request_context(request, user.username)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = BatchImagesCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise service.BatchRefused(_problem(exc)) from None
        submitted = await run_in_threadpool(
            service.submit_images,
            db=db,
            ctx=ctx,
            user=user,
            registry=state.registry,
            default_model=state.settings.default_model,
            image_ids=body.images,
            model=body.model,
            explain=body.explain,
            queue=state.jobs,
            idempotency_key=idempotency_key,
            team=body.team or None,
        )
    else:
        if file is None:
            raise service.BatchRefused(
                "no archive: send a ZIP archive as the 'file' part, or JSON naming stored images"
            )
        submitted = await run_in_threadpool(
            service.submit_archive,
            db=db,
            ctx=ctx,
            user=user,
            registry=state.registry,
            blobs=state.blobs,
            default_model=state.settings.default_model,
            archive=file.file,
            limits=ArchiveLimits.from_upload_limit(state.settings.max_upload_bytes),
            model=model,
            explain=explain,
            queue=state.jobs,
            idempotency_key=idempotency_key,
            team=team or None,
        )
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    public = await run_in_threadpool(service.summaries, db=db, jobs=[submitted.job])
    response.headers["Location"] = public[0].url
    return public[0]


@router.get("/batches", response_model=BatchList)
def list_batches(
    db: SessionDep,
    scope: TeamScope,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
    status: Annotated[str | None, Query(pattern=_STATUS)] = None,
) -> BatchList:
    rows, total = service.list_batches(
        db=db, scope=scope, limit=limit, offset=offset, status=status
    )
    return BatchList(items=service.summaries(db=db, jobs=rows), total=total)


@router.get("/batches/{batch_id}", response_model=BatchDetail)
def get_batch(batch_id: str, db: SessionDep, scope: TeamScope) -> BatchDetail:
    return service.detail(db=db, job=service.get_batch(db=db, batch_id=batch_id, scope=scope))


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchPublic,
    summary="Cancel a batch: a queued one at once, a running one before its next image",
    responses=error_responses(409),
)
def cancel_batch(
    batch_id: str, request: Request, db: SessionDep, state: StateDep, user: ClinicianUser
) -> BatchPublic:
    ctx = request_context(request, user.username)
    job = service.cancel_batch(db=db, ctx=ctx, user=user, batch_id=batch_id, blobs=state.blobs)
    return service.summaries(db=db, jobs=[job])[0]
