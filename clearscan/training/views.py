"""Training-run endpoints: submit, list, watch, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from clearscan.audit import service as audit
from clearscan.deps import AdminUser, AnyUser, SessionDep, StateDep, request_context
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.storage.base import BlobError
from clearscan.training import evaluation
from clearscan.training.evaluation import EVAL_KIND, EvalRequest, compare, resolve
from clearscan.training.runs import TRAIN_KIND, TrainRequest, check_request
from clearscan.training.schemas import (
    EvaluationCreate,
    TrainingRunCreate,
    TrainingRunList,
    TrainingRunPublic,
)

router = APIRouter(tags=["training"])


@router.post(
    "/training-runs",
    response_model=TrainingRunPublic,
    status_code=202,
    summary="Queue a training run; the model it makes is registered as an inactive version",
)
def create_run(
    body: TrainingRunCreate, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> TrainingRunPublic:
    req = TrainRequest(**body.model_dump())
    try:
        ds = check_request(db, req)
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    job = jobs.submit_audited(
        db,
        request_context(request, admin.username),
        kind=TRAIN_KIND,
        action="training.submit",
        params=req.to_params(),
        details={**req.to_params(), "dataset": ds.name, "dataset_hash": ds.content_hash},
    )
    db.commit()
    if state.jobs is not None:
        state.jobs.notify()
    return TrainingRunPublic.of(job)


@router.get("/training-runs", response_model=TrainingRunList)
def list_runs(
    db: SessionDep,
    user: AnyUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TrainingRunList:
    q = select(Job).where(Job.kind == TRAIN_KIND)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all()
    return TrainingRunList(items=[TrainingRunPublic.of(j) for j in rows], total=total)


@router.get("/training-runs/{run_id}", response_model=TrainingRunPublic)
def get_run(run_id: str, db: SessionDep, user: AnyUser) -> TrainingRunPublic:
    try:
        return TrainingRunPublic.of(jobs.get(db, run_id, kind=TRAIN_KIND))
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


@router.post("/training-runs/{run_id}/cancel", response_model=TrainingRunPublic)
def cancel_run(
    run_id: str, request: Request, db: SessionDep, admin: AdminUser
) -> TrainingRunPublic:
    try:
        job = jobs.cancel(db, run_id, kind=TRAIN_KIND)
    except jobs.JobNotFound as exc:
        raise HTTPException(404, exc.detail) from None
    except jobs.JobError as exc:
        raise HTTPException(409, exc.detail) from None
    audit.record(
        db,
        request_context(request, admin.username),
        audit.Entry("training.cancel", object_type="job", object_id=job.id),
    )
    db.commit()
    return TrainingRunPublic.of(job)


# --- evaluations ----------------------------------------------------------------------------------


@router.post(
    "/evaluations",
    response_model=TrainingRunPublic,
    status_code=202,
    tags=["evaluations"],
    summary="Queue an evaluation of a model version on one split of a dataset",
)
def create_evaluation(
    body: EvaluationCreate, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> TrainingRunPublic:
    req = EvalRequest(**body.model_dump())
    try:
        entry, ds, _ = resolve(db, state.registry, req)
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    params = {**req.to_params(), "model": entry.manifest.ref}  # pin the version evaluated
    job = jobs.submit_audited(
        db,
        request_context(request, admin.username),
        kind=EVAL_KIND,
        action="evaluation.submit",
        params=params,
        details={**params, "dataset_hash": ds.content_hash},
    )
    db.commit()
    if state.jobs is not None:
        state.jobs.notify()
    return TrainingRunPublic.of(job)


@router.get("/evaluations", response_model=TrainingRunList, tags=["evaluations"])
def list_evaluations(
    db: SessionDep,
    user: AnyUser,
    model: Annotated[str | None, Query(max_length=128, description="NAME or NAME:VERSION")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TrainingRunList:
    rows, total = evaluation.list_evaluations(db, model=model, limit=limit, offset=offset)
    return TrainingRunList(items=[TrainingRunPublic.of(j) for j in rows], total=total)


@router.get("/evaluations/compare", tags=["evaluations"], summary="Two evaluations side by side")
def compare_evaluations(
    a: Annotated[str, Query(max_length=64)],
    b: Annotated[str, Query(max_length=64)],
    db: SessionDep,
    user: AnyUser,
) -> dict[str, Any]:
    results = []
    for ref in (a, b):
        try:
            job = jobs.get(db, ref, kind=EVAL_KIND)
        except jobs.JobError as exc:
            raise HTTPException(exc.status_code, exc.detail) from None
        if job.status != "succeeded" or not job.result:
            raise HTTPException(409, f"evaluation {ref} has not succeeded ({job.status})")
        results.append(job.result)
    try:
        return compare(results[0], results[1])
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


@router.get("/evaluations/{eval_id}", response_model=TrainingRunPublic, tags=["evaluations"])
def get_evaluation(eval_id: str, db: SessionDep, user: AnyUser) -> TrainingRunPublic:
    try:
        return TrainingRunPublic.of(jobs.get(db, eval_id, kind=EVAL_KIND))
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


@router.get(
    "/evaluations/{eval_id}/report.html",
    response_class=HTMLResponse,
    tags=["evaluations"],
    summary="The evaluation report (tables, ROC and calibration plots)",
)
def evaluation_report(eval_id: str, db: SessionDep, state: StateDep, user: AnyUser) -> Response:
    try:
        job = jobs.get(db, eval_id, kind=EVAL_KIND)
    except jobs.JobError as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    if job.status != "succeeded" or not job.result:
        raise HTTPException(409, f"evaluation {eval_id} has not succeeded ({job.status})")
    try:
        data = state.blobs.get(job.result["report_blob"])
    except BlobError as exc:
        raise HTTPException(500, f"stored report unreadable: {exc}") from None
    return HTMLResponse(data.decode("utf-8"))
