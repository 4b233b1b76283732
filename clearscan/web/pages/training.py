"""Training: the run list with the start-a-run form (admins), one run's live page, and cancel."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.datasets import service as datasets
from clearscan.errors import Conflict
from clearscan.jobs.delivery import QueueUnavailable
from clearscan.jobs.service import JobNotFound
from clearscan.registry.errors import RegistryError
from clearscan.registry.routing import ModelRegistry
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.training import service as training
from clearscan.training.runs import TrainingError
from clearscan.training.schemas import TrainingRunPublic
from clearscan.training.trainers import TrainRequest, recipe_choices
from clearscan.web.errors import page_router, sentence
from clearscan.web.forms import FormStr, Pagination, QueryStr, parse_page
from clearscan.web.present.training import (
    RUN_NOTICES,
    TrainingPage,
    empty_form,
    run_list,
    run_page,
)
from clearscan.web.session import (
    AdminSession,
    WebSession,
    WebSessionDep,
    require_csrf,
    scope_for,
)
from clearscan.web.templating import redirect, render_page

router = page_router()
PAGE_SIZE = 20
SEED_MAX = 2**31 - 1


def _training_page(
    request: Request,
    db: Session,
    ws: WebSession,
    *,
    page: int = 1,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    found = training.list_runs(
        db=db,
        kind=training.TRAIN_KIND,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        scope=scope_for(request, db, ws),
    )
    runs = [TrainingRunPublic.of(j) for j in found.items]
    named = datasets.briefs(db=db, refs=(str(r.params.get("dataset", "")) for r in runs))
    view = TrainingPage(
        items=run_list(runs, named),
        pages=Pagination(page, PAGE_SIZE, found.total, {}),
        datasets=datasets.choices(db=db) if ws.is_admin else [],
        recipes=recipe_choices() if ws.is_admin else {},
        form=form or empty_form(),
        error=error,
    )
    return render_page(request, view, ws=ws, status=status)


@router.get("/training", response_class=HTMLResponse)
def training_view(
    request: Request,
    db: SessionDep,
    ws: WebSessionDep,
    page: QueryStr = None,
    dataset: QueryStr = None,
) -> Response:
    form = empty_form(dataset=(dataset or "").strip()[:64])
    return _training_page(request, db, ws, page=parse_page(page), form=form)


def _train_request(form: dict[str, str]) -> TrainRequest | str:
    """The form as a TrainRequest, or what is wrong with it (the service checks the rest)."""
    if not form["dataset"]:
        return "Choose a dataset."
    if len(form["dataset"]) > 64 or len(form["recipe"]) > 64 or len(form["model_name"]) > 64:
        return "Dataset, recipe and model name are at most 64 characters each."
    epochs: int | None = None
    if form["epochs"]:
        try:
            epochs = int(form["epochs"])
        except ValueError:
            return "Epochs: give a whole number from 1 to 500, or leave it empty."
    try:
        seed = int(form["seed"] or 0)
    except ValueError:
        seed = -1
    if not 0 <= seed <= SEED_MAX:
        return f"Seed: give a whole number from 0 to {SEED_MAX}."
    return TrainRequest(
        dataset=form["dataset"],
        recipe=form["recipe"] if form["recipe"] not in ("", "default") else None,
        epochs=epochs,
        seed=seed,
        model_name=form["model_name"] or None,
    )


@router.post("/training", response_class=HTMLResponse)
def training_submit(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    dataset: FormStr = None,
    recipe: FormStr = None,
    epochs: FormStr = None,
    seed: FormStr = None,
    model_name: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = {
        "dataset": dataset,
        "recipe": recipe,
        "epochs": epochs,
        "seed": seed,
        "model_name": model_name,
    }
    form = {k: (v or "").strip()[:200] for k, v in given.items()}
    req = _train_request(form)
    if isinstance(req, str):
        return _training_page(request, db, ws, form=form, error=req, status=422)
    try:
        job = training.submit_run(
            db=db,
            ctx=request_context(request, ws.username),
            request=req,
            queue=state.jobs,
            via="web",
            team_id=teams.team_for_new_row(db=db, user=ws.user),
        )
    # shown on the form, with what was entered
    except (TrainingError, QueueUnavailable, teams.NoTeam, teams.TeamUnknown) as exc:
        detail = exc.detail.replace("model_name:", "model name:")  # the API's field name
        return _training_page(
            request, db, ws, form=form, error=sentence(detail), status=exc.status_code
        )
    return redirect(f"/training/{job.id}")


def _model_status(registry: ModelRegistry, run: TrainingRunPublic) -> str | None:
    """The status of the version a succeeded run registered; None when it is not installed."""
    r = run.result or {}
    name, version = str(r.get("name") or ""), str(r.get("version") or "")
    if run.status != "succeeded" or not (name and version):
        return None
    try:
        return registry.status(registry.version(name, version))
    except RegistryError:
        return None


def _run_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    run_id: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    # JobNotFound: the "Training run not found" page
    run = TrainingRunPublic.of(
        training.get_run(db=db, run_id=run_id, scope=scope_for(request, db, ws))
    )
    ref = str(run.params.get("dataset", ""))
    page = run_page(
        run,
        dataset=datasets.briefs(db=db, refs=[ref]).get(ref),
        model_status=_model_status(state.registry, run),
        can_cancel=ws.is_admin,
        now=datetime.now(UTC),
        notice=notice,
        error=error,
    )
    return render_page(request, page, ws=ws, status=status)


@router.get("/training/{run_id}", response_class=HTMLResponse)
def training_run_view(
    run_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    done: QueryStr = None,
) -> Response:
    notice = None
    if done == "cancel":
        try:
            job = training.get_run(db=db, run_id=run_id, scope=scope_for(request, db, ws))
        except JobNotFound:
            job = None
        if job is not None and job.status == "cancelled":
            notice = RUN_NOTICES["cancelled" if job.started_at else "cancelled-queued"]
        elif job is not None and job.cancel_requested and job.status == "running":
            notice = RUN_NOTICES["cancel-requested"]
    return _run_page(request, db, state, ws, run_id, notice=notice)


@router.post("/training/{run_id}/cancel", response_class=HTMLResponse)
def training_cancel(
    run_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:  # JobNotFound: the "Training run not found" page
        training.cancel_run(
            db=db,
            ctx=request_context(request, ws.username),
            run_id=run_id,
            via="web",
            scope=scope_for(request, db, ws),
        )
    except Conflict as exc:  # already finished: said on the run's page
        db.rollback()
        return _run_page(
            request, db, state, ws, run_id, error=f"{sentence(exc.detail)}.", status=409
        )
    return redirect(f"/training/{run_id}?done=cancel")
