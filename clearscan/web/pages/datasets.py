"""Datasets: the list with the import form (admins), and one dataset's page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import File, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.datasets import service as datasets
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset
from clearscan.datasets.schemas import DatasetDetail
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.training.previews import PreviewTooLarge, preview_bounds
from clearscan.training.tabular import TabularError, preview
from clearscan.web.errors import page_router, sentence
from clearscan.web.forms import FormStr, Pagination, QueryStr, parse_page
from clearscan.web.present.datasets import FIELDS, DatasetsPage, dataset_page, empty_form
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


def _datasets_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    *,
    page: int = 1,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rows, total = datasets.list_datasets(
        db=db,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        scope=scope_for(request, db, ws),
    )
    view = DatasetsPage(
        items=rows,
        pages=Pagination(page, PAGE_SIZE, total, {}),
        error=error,
        form=form or empty_form(),
        max_upload_mb=state.settings.max_dataset_upload_mb,
        teams=tuple(teams.names_of(db=db, user_ids=[ws.user.id])[ws.user.id]),
    )
    return render_page(request, view, ws=ws, status=status)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    page: QueryStr = None,
) -> Response:
    return _datasets_page(request, db, state, ws, page=parse_page(page))


def _import_problem(file: UploadFile | None, form: dict[str, str]) -> str | None:
    # A browser sends one empty part when no file is chosen.
    if file is None or not (file.filename or file.size):
        return "Choose a dataset file: a .zip of class folders, a MedMNIST .npz or a CSV table."
    if file.size == 0:
        return "The chosen file is empty."
    if not form["name"]:
        return "Give the dataset a name."
    for key, (title, longest) in FIELDS.items():
        if len(form[key]) > longest:
            return f"{title} is longer than {longest} characters."
    return None


@router.post("/datasets", response_class=HTMLResponse)
def datasets_import(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    file: Annotated[UploadFile | None, File()] = None,
    name: FormStr = None,
    target: FormStr = None,
    time_column: FormStr = None,
    group_column: FormStr = None,
    labels: FormStr = None,
    license: FormStr = None,
    team: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = (name, target, time_column, group_column, labels, license, team)
    form = {k: (v or "").strip() for k, v in zip(FIELDS, given, strict=True)}
    problem = _import_problem(file, form)
    if problem or file is None:
        return _datasets_page(request, db, state, ws, error=problem, form=form, status=422)
    options = datasets.ImportOptions(
        name=form["name"],
        target=form["target"] or None,
        time_column=form["time_column"] or None,
        group_column=form["group_column"] or None,
        labels=[x.strip() for x in form["labels"].split(",") if x.strip()] or None,
        license=form["license"] or None,
    )
    try:
        team_id = teams.team_for_new_row(db=db, user=ws.user, team=form["team"] or None)
        ds = datasets.import_upload(
            db=db,
            blobs=state.blobs,
            ctx=request_context(request, ws.username),
            upload=file.file,
            tmp_dir=state.settings.data_dir,
            options=options,
            limits=state.limits,
            max_bytes=int(state.settings.max_dataset_upload_mb * 2**20),
            team_id=team_id,
            deid=state.settings.deid_policy(),
        )
    # shown on the form, with what was entered
    except (DatasetError, teams.NoTeam, teams.TeamUnknown) as exc:
        db.rollback()
        return _datasets_page(
            request, db, state, ws, error=sentence(exc.detail), form=form, status=exc.status_code
        )
    return redirect(f"/datasets/{ds.id}")


def _features(db: Session, state: AppState, ds: Dataset) -> dict[str, Any]:
    """The first rows of the feature table a training run would use, and the latest feature
    importance; {"error": ...} when the table cannot be turned into features."""
    try:
        return preview(db, state.blobs, ds, limit=10, bounds=preview_bounds(state.settings))
    except (TabularError, PreviewTooLarge) as exc:
        return {"error": str(exc)}


@router.get("/datasets/{ref}", response_class=HTMLResponse)
def dataset_view(
    ref: str, request: Request, db: SessionDep, state: StateDep, ws: WebSessionDep
) -> Response:
    # DatasetNotFound (also for another team's dataset): the "Dataset not found" page
    ds = datasets.get(db=db, ref=ref, scope=scope_for(request, db, ws))
    per_class = 4 if len(ds.classes) <= 10 else 2
    items = datasets.samples(db=db, ds=ds, per_class=per_class) if ds.kind == "images" else []
    page = dataset_page(
        DatasetDetail.of_detail(ds, items),
        _features(db, state, ds) if ds.kind == "table" else None,
    )
    return render_page(request, page, ws=ws)
