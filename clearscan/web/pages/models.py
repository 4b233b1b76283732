"""Models: the list, one model's page, and its admin forms (activate, roll back, canary and
shadow roll-out, evaluate a version on a dataset)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.datasets import service as datasets
from clearscan.errors import ClearScanError
from clearscan.jobs.delivery import QueueUnavailable
from clearscan.registry import service as registry_service
from clearscan.registry.errors import RegistryError
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.schemas import ModelDetail, ModelVersionPublic
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.training import service as training
from clearscan.training.evaluation import EvalRequest, EvaluationError
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.errors import page_router, sentence
from clearscan.web.forms import FormStr, QueryStr
from clearscan.web.present.evaluations import SPLITS
from clearscan.web.present.models import (
    NOTICES,
    ModelsPage,
    model_page,
    rollout_form_of,
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
EVALUATIONS_SHOWN = 200  # evaluations listed on a model page (newest first)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, state: StateDep, ws: WebSessionDep) -> Response:
    reg = state.registry
    page = ModelsPage(
        models=[
            ModelDetail.of_detail(e, reg.status(e)) for e in reg.entries(include_inactive=True)
        ],
        problems=reg.problems if ws.is_admin else [],
        default_model=state.settings.default_model,
    )
    return render_page(request, page, ws=ws)


def _shadow_report(
    db: Session, reg: ModelRegistry, name: str, shadow: str | None
) -> dict[str, object] | None:
    """The shadow report of the shadow version, or of the last one that left results."""
    version = shadow or registry_service.last_shadow_version(db=db, name=name)
    if version is None:
        return None
    try:
        return registry_service.shadow_report(db=db, registry=reg, name=name, version=version)
    except RegistryError:  # e.g. that version has been removed since: no report to show
        return None


def _model_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    name: str,
    *,
    error: str | None = None,
    notice: str | None = None,
    rollout_form: dict[str, str] | None = None,
    eval_form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    reg = state.registry
    entry = reg.describe(name)  # ModelNotFound: the "Model not found" page
    versions = [ModelVersionPublic.of(e, reg.status(e)) for e in reg.versions(name)]
    plan = report = None
    if ws.is_admin and reg.status(entry) != "inactive":
        plan = reg.rollout(name)
        rollout_form = rollout_form if rollout_form is not None else rollout_form_of(plan)
        shadow = plan.get("shadow")
        report = _shadow_report(
            db, reg, name, shadow["version"] if isinstance(shadow, dict) else None
        )
    evals = training.list_runs(
        db=db,
        kind=training.EVAL_KIND,
        model=name,
        limit=EVALUATIONS_SHOWN,
        scope=scope_for(request, db, ws),
    )
    runs = [TrainingRunPublic.of(j) for j in evals.items]
    named = datasets.briefs(db=db, refs=(str(r.params.get("dataset", "")) for r in runs))
    page = model_page(
        entry,
        reg.status(entry),
        versions,
        plan=plan,
        report=report,
        rollout_form=rollout_form,
        evaluations=runs,
        evaluations_total=evals.total,
        dataset_names={ref: b.name for ref, b in named.items()},
        eval_datasets=datasets.choices(db=db, order="newest") if ws.is_admin else [],
        eval_form=eval_form,
        error=error,
        notice=notice,
    )
    return render_page(request, page, ws=ws, status=status)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_view(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    done: QueryStr = None,
) -> Response:
    notice = None
    if done in NOTICES:
        try:
            active = state.registry.get(name).manifest.version
        except RegistryError:
            active = ""
        notice = NOTICES[done].format(active=active)
    return _model_page(request, db, state, ws, name, notice=notice)


def _refused(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    name: str,
    exc: ClearScanError,
    rollout_form: dict[str, str] | None = None,
    eval_form: dict[str, str] | None = None,
) -> HTMLResponse:
    """The model page again, saying why the change was refused (the form keeps its input)."""
    db.rollback()
    return _model_page(
        request,
        db,
        state,
        ws,
        name,
        error=sentence(exc.detail),
        rollout_form=rollout_form,
        eval_form=eval_form,
        status=exc.status_code,
    )


@router.post("/models/{name}/versions/{version}/activate", response_class=HTMLResponse)
def model_activate(
    name: str,
    version: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        registry_service.activate(
            db=db,
            ctx=request_context(request, ws.username),
            registry=state.registry,
            name=name,
            version=version,
        )
    except RegistryError as exc:
        return _refused(request, db, state, ws, name, exc)
    return redirect(f"/models/{name}?done=activated")


@router.post("/models/{name}/rollback", response_class=HTMLResponse)
def model_rollback(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        registry_service.rollback(
            db=db, ctx=request_context(request, ws.username), registry=state.registry, name=name
        )
    except RegistryError as exc:
        return _refused(request, db, state, ws, name, exc)
    return redirect(f"/models/{name}?done=rolled-back")


@router.post("/models/{name}/rollout", response_class=HTMLResponse)
def model_rollout(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    canary_version: FormStr = None,
    canary_percent: FormStr = None,
    shadow_version: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    form = {
        "canary_version": (canary_version or "").strip()[:64],
        "canary_percent": (canary_percent or "").strip()[:16],
        "shadow_version": (shadow_version or "").strip()[:64],
    }
    canary: tuple[str, int] | None = None
    if form["canary_version"]:
        text = form["canary_percent"]
        percent = int(text) if text.isdigit() else -1
        if not 0 <= percent <= 100:
            return _model_page(
                request,
                db,
                state,
                ws,
                name,
                error="Canary percent: give a whole number from 0 to 100.",
                rollout_form=form,
                status=422,
            )
        canary = (form["canary_version"], percent)
    try:
        registry_service.set_rollout(
            db=db,
            ctx=request_context(request, ws.username),
            registry=state.registry,
            name=name,
            canary=canary,
            shadow=form["shadow_version"] or None,
        )
    except RegistryError as exc:
        return _refused(request, db, state, ws, name, exc, rollout_form=form)
    return redirect(f"/models/{name}?done=rollout")


def _eval_problem(form: dict[str, str]) -> str | None:
    """What is wrong with the evaluation form (the service checks the rest)."""
    if not form["version"]:
        return "Choose a version to evaluate."
    if not form["dataset"]:
        return "Choose a dataset."
    if len(form["version"]) > 64 or len(form["dataset"]) > 64:
        return "Version and dataset are at most 64 characters each."
    if form["split"] not in SPLITS:
        return "Split: choose train, val or test."
    return None


@router.post("/models/{name}/evaluations", response_class=HTMLResponse)
def model_evaluate(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    version: FormStr = None,
    dataset: FormStr = None,
    split: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = {"version": version, "dataset": dataset, "split": split}
    form = {k: (v or "").strip()[:200] for k, v in given.items()}
    form["split"] = form["split"] or "test"
    problem = _eval_problem(form)
    if problem:
        return _model_page(request, db, state, ws, name, error=problem, eval_form=form, status=422)
    try:
        training.submit_evaluation(
            db=db,
            ctx=request_context(request, ws.username),
            registry=state.registry,
            request=EvalRequest(f"{name}:{form['version']}", form["dataset"], form["split"]),
            queue=state.jobs,
            via="web",
            team_id=teams.team_for_new_row(db=db, user=ws.user),
        )
    except (EvaluationError, QueueUnavailable, teams.NoTeam, teams.TeamUnknown) as exc:
        return _refused(request, db, state, ws, name, exc, eval_form=form)
    return redirect(f"/models/{name}?done=evaluate")
