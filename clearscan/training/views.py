"""Training-run endpoints: submit, list, watch, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import func, select

from clearscan.audit import service as audit
from clearscan.deps import AdminUser, AnyUser, SessionDep, StateDep, request_context
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.training.runs import TRAIN_KIND, TrainRequest, check_request
from clearscan.training.schemas import TrainingRunCreate, TrainingRunList, TrainingRunPublic

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
    job = jobs.submit(db, kind=TRAIN_KIND, params=req.to_params(), actor=admin.username)
    audit.record(
        db,
        request_context(request, admin.username),
        audit.Entry(
            "training.submit",
            object_type="job",
            object_id=job.id,
            details={"dataset": ds.name, "dataset_hash": ds.content_hash, **req.to_params()},
        ),
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
