"""Dataset endpoints: import (at once, or as a job with ``Prefer: respond-async``), the state of
an import run as a job, list, detail, sample images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response

from clearscan.api.deps import (
    AdminUser,
    AnyUser,
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
from clearscan.datasets import jobs, service
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.schemas import (
    DatasetDetail,
    DatasetImportPublic,
    DatasetList,
    DatasetPublic,
)
from clearscan.imaging import decode, render_png
from clearscan.teams import service as teams

router = APIRouter(tags=["datasets"])

RESPOND_ASYNC = "respond-async"
_ACCEPTED = {
    "model": DatasetImportPublic,
    "description": "With `Prefer: respond-async`: the upload is stored and its import queued "
    "as a job; poll `Location`",
    "headers": {
        "Location": {
            "description": "the import: /api/v1/dataset-imports/{id}",
            "schema": {"type": "string"},
            "required": True,
        },
        "Preference-Applied": {
            "description": "respond-async",
            "schema": {"type": "string"},
            "required": True,
        },
    },
}


def respond_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for respond-async; other preferences, and
    their parameters, are ignored."""
    if not prefer:
        return False
    return any(
        p.split(";", 1)[0].split("=", 1)[0].strip().lower() == RESPOND_ASYNC
        for p in prefer.split(",")
    )


@router.post(
    "/datasets",
    response_model=DatasetDetail,
    status_code=201,
    summary="Import a dataset: a .zip of class folders, a MedMNIST .npz or a CSV table",
    description="By default the import runs within the request: 201 with the dataset. With "
    "`Prefer: respond-async` the upload is stored, the name checked (422, 409 at once) and the "
    "import queued as a job: 202 with `Preference-Applied: respond-async`, `Location: "
    "/api/v1/dataset-imports/{id}` and the import's state (its `dataset` once it succeeded). "
    "An `Idempotency-Key` header makes a retried asynchronous request return the import the "
    "first one made.",
    responses={202: _ACCEPTED, **error_responses(409, 415, 503)},
)
def import_dataset(
    request: Request,
    db: SessionDep,
    state: StateDep,
    admin: AdminUser,
    file: Annotated[UploadFile, File(description=".zip of <class>/ folders, .npz or .csv")],
    name: Annotated[str, Form(max_length=64)],
    target: Annotated[str | None, Form(max_length=200, description="CSV: class column")] = None,
    time_column: Annotated[str | None, Form(max_length=200)] = None,
    group_column: Annotated[str | None, Form(max_length=200)] = None,
    labels: Annotated[
        str | None, Form(max_length=4000, description=".npz: class names a,b,...")
    ] = None,
    license: Annotated[
        str | None, Form(max_length=2000, description="licence and attribution of the data")
    ] = None,
    team: Annotated[
        str | None,
        Form(max_length=64, description="the dataset's team, for an admin in several"),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            max_length=1000,
            examples=[RESPOND_ASYNC],
            description="`respond-async`: import as a job, answer 202 at once (RFC 7240)",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=128,
            description="with respond-async: names one import",
        ),
    ] = None,
) -> DatasetDetail | JSONResponse:
    options = service.ImportOptions(
        name=name,
        target=target or None,
        time_column=time_column or None,
        group_column=group_column or None,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        license=license or None,
    )
    team_id = teams.team_for_new_row(db=db, user=admin, team=team or None)
    if respond_async(prefer):
        submitted = jobs.submit_import(
            db=db,
            blobs=state.blobs,
            ctx=request_context(request, admin.username),
            user_id=admin.id,
            upload=file.file,
            tmp_dir=state.settings.data_dir,
            options=options,
            max_upload_bytes=int(state.settings.max_dataset_upload_mb * 2**20),
            queue=state.jobs,
            idempotency_key=idempotency_key,
            team_id=team_id,
        )
        body = jobs.public(db=db, job=submitted.job)
        headers = {"Location": body.url, "Preference-Applied": RESPOND_ASYNC}
        if not submitted.created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(jsonable_encoder(body), status_code=202, headers=headers)
    ds = service.import_upload(
        db=db,
        blobs=state.blobs,
        ctx=request_context(request, admin.username),
        upload=file.file,
        tmp_dir=state.settings.data_dir,
        options=options,
        limits=state.limits,
        max_bytes=int(state.settings.max_dataset_upload_mb * 2**20),
        team_id=team_id,
        deid=state.settings.deid_policy(),
    )
    return DatasetDetail.of_detail(ds, service.samples(db=db, ds=ds))


@router.get(
    "/dataset-imports/{import_id}",
    response_model=DatasetImportPublic,
    summary="A dataset import run as a job: its status, progress, and the dataset once done",
)
def get_dataset_import(
    import_id: str, db: SessionDep, admin: AdminUser, scope: TeamScope
) -> DatasetImportPublic:
    return jobs.public(db=db, job=jobs.get_import(db=db, import_id=import_id, scope=scope))


@router.get("/datasets", response_model=DatasetList)
def list_datasets(
    db: SessionDep,
    scope: TeamScope,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> DatasetList:
    rows, total = service.list_datasets(db=db, limit=limit, offset=offset, scope=scope)
    return DatasetList(items=[DatasetPublic.of(d) for d in rows], total=total)


@router.get("/datasets/{dataset_id}", response_model=DatasetDetail)
def get_dataset(dataset_id: str, db: SessionDep, scope: TeamScope) -> DatasetDetail:
    ds = service.get(db=db, ref=dataset_id, scope=scope)
    return DatasetDetail.of_detail(ds, service.samples(db=db, ds=ds))


@router.get(
    "/datasets/{dataset_id}/items/{idx}/image.png",
    response_class=Response,
    summary="One image of an image dataset, rendered as PNG",
    responses=error_responses(413, 415),
)
async def item_image(
    dataset_id: str,
    idx: Annotated[int, Path(ge=0, le=10**9)],
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
) -> Response:
    ds = service.get(db=db, ref=dataset_id, scope=scope)
    row = service.item(db=db, ds=ds, idx=idx)

    def render() -> bytes:
        png = render_png(decode(state.blobs.get(row.blob), limits=state.limits))
        entry = audit.Entry(
            Action.DATASET_ITEM_VIEW, object_type="dataset", object_id=ds.id, details={"item": idx}
        )
        audit.record(entry, db=db, ctx=request_context(request, user.username))
        return png

    png = await run_in_threadpool(render)
    return PHIResponse(png, media_type="image/png")


@router.get(
    "/datasets/{dataset_id}/features/preview",
    summary="Tables: the feature table a training run would use (windowed for sensor streams), "
    "and the feature importance of the latest model trained on it",
)
def features_preview(
    dataset_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    user: AnyUser,
    scope: TeamScope,
    window: Annotated[int | None, Query(ge=4, le=100_000)] = None,
    step: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    from clearscan.training.previews import preview_bounds
    from clearscan.training.tabular import preview

    ds = service.get(db=db, ref=dataset_id, scope=scope)
    if ds.kind != "table":
        raise DatasetError(f"dataset {ds.name!r} holds images: features are for tables")
    found = preview(
        db,
        state.blobs,
        ds,
        length=window,
        step=step,
        limit=limit,
        bounds=preview_bounds(state.settings),
    )
    details = {"window": window, "step": step, "limit": limit, "returned": len(found["rows"])}
    audit.record(
        audit.Entry(
            Action.FEATURES_PREVIEW, object_type="dataset", object_id=ds.id, details=details
        ),
        db=db,
        ctx=request_context(request, user.username),
    )
    return found
