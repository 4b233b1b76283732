"""Training-run and evaluation endpoints: submit, list, watch, cancel, compare, report. Thin:
each calls clearscan.training.service, whose errors the API's one handler answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from clearscan.api.deps import (
    AdminUser,
    Offset,
    SessionDep,
    StateDep,
    TeamScope,
    request_context,
)
from clearscan.api.errors import error_responses
from clearscan.api.responses import PHIResponse
from clearscan.teams import service as teams
from clearscan.training import service
from clearscan.training.evaluation import EVAL_KIND, EvalRequest
from clearscan.training.runs import TRAIN_KIND, TrainRequest
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
    responses=error_responses(503),
)
def create_run(
    body: TrainingRunCreate, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> TrainingRunPublic:
    ctx = request_context(request, admin.username)
    team_id = teams.team_for_new_row(db=db, user=admin, team=body.team)
    req = TrainRequest(**body.model_dump(exclude={"team"}))
    job = service.submit_run(db=db, ctx=ctx, request=req, queue=state.jobs, team_id=team_id)
    return TrainingRunPublic.of(job)


@router.get("/training-runs", response_model=TrainingRunList)
def list_runs(
    db: SessionDep,
    scope: TeamScope,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> TrainingRunList:
    rows, total = service.list_runs(db=db, kind=TRAIN_KIND, limit=limit, offset=offset, scope=scope)
    return TrainingRunList(items=[TrainingRunPublic.of(j) for j in rows], total=total)


@router.get("/training-runs/{run_id}", response_model=TrainingRunPublic)
def get_run(run_id: str, db: SessionDep, scope: TeamScope) -> TrainingRunPublic:
    return TrainingRunPublic.of(service.get_run(db=db, run_id=run_id, kind=TRAIN_KIND, scope=scope))


@router.post(
    "/training-runs/{run_id}/cancel",
    response_model=TrainingRunPublic,
    responses=error_responses(409),
)
def cancel_run(
    run_id: str, request: Request, db: SessionDep, admin: AdminUser, scope: TeamScope
) -> TrainingRunPublic:
    ctx = request_context(request, admin.username)
    return TrainingRunPublic.of(service.cancel_run(db=db, ctx=ctx, run_id=run_id, scope=scope))


# --- evaluations ----------------------------------------------------------------------------------


@router.post(
    "/evaluations",
    response_model=TrainingRunPublic,
    status_code=202,
    tags=["evaluations"],
    summary="Queue an evaluation of a model version on one split of a dataset",
    responses=error_responses(503),
)
def create_evaluation(
    body: EvaluationCreate, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> TrainingRunPublic:
    ctx = request_context(request, admin.username)
    team_id = teams.team_for_new_row(db=db, user=admin, team=body.team)
    req = EvalRequest(**body.model_dump(exclude={"team"}))
    job = service.submit_evaluation(
        db=db, ctx=ctx, registry=state.registry, request=req, queue=state.jobs, team_id=team_id
    )
    return TrainingRunPublic.of(job)


@router.get("/evaluations", response_model=TrainingRunList, tags=["evaluations"])
def list_evaluations(
    db: SessionDep,
    scope: TeamScope,
    model: Annotated[str | None, Query(max_length=128, description="NAME or NAME:VERSION")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> TrainingRunList:
    rows, total = service.list_runs(
        db=db, kind=EVAL_KIND, model=model, limit=limit, offset=offset, scope=scope
    )
    return TrainingRunList(items=[TrainingRunPublic.of(j) for j in rows], total=total)


@router.get(
    "/evaluations/compare",
    tags=["evaluations"],
    summary="Two evaluations side by side",
    responses=error_responses(404, 409),
)
def compare_evaluations(
    a: Annotated[str, Query(max_length=64)],
    b: Annotated[str, Query(max_length=64)],
    db: SessionDep,
    scope: TeamScope,
) -> dict[str, Any]:
    return service.compare_evaluations(db=db, a=a, b=b, scope=scope)


@router.get("/evaluations/{eval_id}", response_model=TrainingRunPublic, tags=["evaluations"])
def get_evaluation(eval_id: str, db: SessionDep, scope: TeamScope) -> TrainingRunPublic:
    return TrainingRunPublic.of(service.get_run(db=db, run_id=eval_id, kind=EVAL_KIND, scope=scope))


@router.get(
    "/evaluations/{eval_id}/report.html",
    response_class=Response,  # errors answer JSON, so the route's default type is not HTML
    tags=["evaluations"],
    summary="The evaluation report (tables, ROC and calibration plots)",
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
        **error_responses(409),
    },
)
def evaluation_report(eval_id: str, db: SessionDep, state: StateDep, scope: TeamScope) -> Response:
    return PHIResponse(
        service.evaluation_report(db=db, blobs=state.blobs, eval_id=eval_id, scope=scope),
        media_type="text/html",
    )
