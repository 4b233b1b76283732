"""Training pages: the run list, and one run's live numbers, chart and result.

Runs are `TrainingRunPublic` (the API's shape); their progress and result are the JSON the
trainer reported, so every value is read defensively."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clearscan.datasets.service import DatasetBrief
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.forms import Pagination
from clearscan.web.present.charts import TrainingChart, training_chart
from clearscan.web.present.numbers import DASH, as_int, duration, finite, fixed3
from clearscan.web.present.page import Page

LIVE_STATUSES = ("queued", "running")
METRIC_TITLES = {
    "n": "Validation items",
    "accuracy": "Accuracy",
    "auc": "AUC",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}
RECIPE_FACTS = (
    ("size", "Input size (px)"),
    ("epochs", "Epochs (at most)"),
    ("batch_size", "Batch size"),
    ("lr", "Learning rate"),
    ("weight_decay", "Weight decay"),
    ("patience", "Early-stopping patience"),
    ("seed", "Seed"),
)
RUN_NOTICES = {
    "cancelled": "Training run cancelled; nothing was registered.",
    "cancelled-queued": "Training run cancelled before it started; nothing was registered.",
    "cancel-requested": "Cancellation requested: the run stops at its next progress report "
    "and registers nothing.",
}


def empty_form(dataset: str = "") -> dict[str, str]:
    """The start-a-run form's fields as a fresh page shows them."""
    return {"dataset": dataset, "recipe": "", "epochs": "", "seed": "0", "model_name": ""}


# --- the run list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunListItem:
    run: TrainingRunPublic
    dataset: str
    recipe: str
    progress: str
    best_auc: object  # as reported: shown with the metric filter unless None
    model: object  # NAME:VERSION registered, from the result
    model_name: object


@dataclass(frozen=True, kw_only=True)
class TrainingPage(Page):
    template = "training.html"
    items: list[RunListItem]
    pages: Pagination
    datasets: list[DatasetBrief]  # choices of the form (admins only)
    recipes: dict[str, list[str]]  # recipe names by dataset kind (admins only)
    form: dict[str, str]
    error: str | None = None


def recipe_of(run: TrainingRunPublic) -> str:
    """The recipe the run used (its result), else the one asked for, else "default"."""
    recipe = (run.result or {}).get("recipe")
    if isinstance(recipe, dict) and recipe.get("name"):
        return str(recipe["name"])
    if isinstance(recipe, str) and recipe:
        return recipe
    asked = run.params.get("recipe") or run.progress.get("recipe")
    return str(asked) if asked else "default"


def progress_text(run: TrainingRunPublic) -> str:
    """One line for the run list: where the run is (or where it stopped)."""
    p = run.progress
    if run.status == "queued":
        return "waiting for the worker"
    if run.status == "succeeded":
        n = as_int((run.result or {}).get("epochs_run"))
        return f"done · {n} epoch{'s' if n != 1 else ''}" if n else "done"
    epoch, epochs = as_int(p.get("epoch")), as_int(p.get("epochs"))
    step, steps = as_int(p.get("step")), as_int(p.get("steps"))
    if epoch and epochs:
        text = f"epoch {epoch}/{epochs}"
    elif step and steps:
        text = f"{p.get('stage') or 'step'} ({step}/{steps})"
    else:
        text = str(p.get("stage") or "")
    if run.status == "running":
        return text or "starting"
    return f"stopped at {text}" if text else DASH


def best_auc(run: TrainingRunPublic) -> object:
    best = run.progress.get("best_val_auc")
    if finite(best) is not None:
        return best
    metrics = (run.result or {}).get("val_metrics")
    return metrics.get("auc") if isinstance(metrics, dict) else None


def run_list(
    runs: Sequence[TrainingRunPublic], datasets: Mapping[str, DatasetBrief]
) -> list[RunListItem]:
    """The rows of the run list; `datasets` maps the id or name a run names to its dataset."""
    items = []
    for run in runs:
        ref = str(run.params.get("dataset", ""))
        brief = datasets.get(ref)
        result = run.result or {}
        items.append(
            RunListItem(
                run=run,
                dataset=(brief.name if brief else None) or ref,
                recipe=recipe_of(run),
                progress=progress_text(run),
                best_auc=best_auc(run),
                model=result.get("model"),
                model_name=result.get("name"),
            )
        )
    return items


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressBar:
    value: int
    max: int


@dataclass(frozen=True)
class LiveNumbers:
    """The numbers static/training.js keeps up to date (by data-field), and the bar."""

    stage: str
    epoch: str
    loss: str
    val_auc: str
    val_acc: str
    best: str
    elapsed: str
    eta: str
    bar: ProgressBar | None  # None: an indeterminate bar (queued, loading)
    steps: bool  # counting steps, not epochs


@dataclass(frozen=True)
class CvRow:
    recipe: str
    mean: object
    std: object
    chosen: bool


@dataclass(frozen=True)
class ImportanceBar:
    feature: object
    value: float
    width: str  # percent of the largest importance shown


@dataclass(frozen=True)
class RunResult:
    model: object
    name: str
    version: str
    model_status: str | None  # of the registered version now; None when it is not installed
    metrics: list[tuple[str, object]]
    threshold: float | None
    positive: str | None  # the positive class of a binary task
    epochs_run: int | None
    best_epoch: int | None
    wall: str | None
    recipe: str
    recipe_facts: list[tuple[str, object]]
    cv: list[CvRow]
    importance: list[ImportanceBar]
    dataset: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainingRunPage(Page):
    template = "training_run.html"
    run: TrainingRunPublic
    live: bool
    dataset_name: str
    dataset_kind: str | None
    recipe: str
    numbers: LiveNumbers
    now_ms: int
    chart: TrainingChart | None
    history: list[dict[str, Any]]
    result: RunResult | None
    can_cancel: bool
    notice: str | None = None
    error: str | None = None


def elapsed(run: TrainingRunPublic, now: datetime) -> float | None:
    """Wall time since the run started (to its end), as training.js computes it."""
    if run.started_at is None:
        return None
    return ((run.finished_at or now) - run.started_at).total_seconds()


def live_numbers(run: TrainingRunPublic, now: datetime) -> LiveNumbers:
    p = run.progress
    epoch, epochs = as_int(p.get("epoch")), as_int(p.get("epochs"))
    step, steps = as_int(p.get("step")), as_int(p.get("steps"))
    stage = p.get("stage") or ("waiting for the worker" if run.status == "queued" else "")
    if run.status == "succeeded":
        stage = "finished"
    elif run.status in ("failed", "cancelled"):
        stage = f"{run.status}{f' while {stage}' if stage else ''}"
    bar = None
    if epochs:
        bar = ProgressBar(value=min(epoch or 0, epochs), max=epochs)
    elif steps:
        bar = ProgressBar(value=min(step or 0, steps), max=steps)
    if run.status == "succeeded":
        bar = ProgressBar(value=1, max=1)
    best_epoch = as_int(p.get("best_epoch"))
    best = fixed3(p.get("best_val_auc"))
    return LiveNumbers(
        stage=stage or DASH,
        epoch=f"{epoch} / {epochs}" if epochs else (f"{step} / {steps}" if steps else DASH),
        loss=fixed3(p.get("loss")),
        val_auc=fixed3(p.get("val_auc")),
        val_acc=fixed3(p.get("val_acc")),
        best=f"{best} (epoch {best_epoch})" if best != DASH and best_epoch else best,
        elapsed=duration(elapsed(run, now)),
        eta=duration(p.get("eta_s")) if run.status == "running" else DASH,
        bar=bar,
        steps=bool(steps and not epochs),
    )


def _cv_rows(cv: object, chosen: object) -> list[CvRow]:
    if not isinstance(cv, dict):
        return []
    scores = {k: v if isinstance(v, dict) else {} for k, v in cv.items()}
    ranked = sorted(scores.items(), key=lambda kv: -(finite(kv[1].get("auc_mean")) or 0.0))
    return [
        CvRow(recipe=k, mean=s.get("auc_mean"), std=s.get("auc_std"), chosen=k == chosen)
        for k, s in ranked
    ]


def _importance(features: object) -> list[ImportanceBar]:
    if not isinstance(features, list):
        return []
    top = [f for f in features if isinstance(f, dict)][:10]
    peak = max([finite(f.get("importance")) or 0.0 for f in top] + [0.0])
    bars = []
    for f in top:
        value = finite(f.get("importance")) or 0.0
        share = max(0.0, value) / peak if peak > 0 else 0.0
        bars.append(
            ImportanceBar(feature=f.get("feature", ""), value=value, width=f"{100 * share:.1f}")
        )
    return bars


def run_result(
    run: TrainingRunPublic, classes: list[str], model_status: str | None
) -> RunResult | None:
    """What a succeeded run made; `model_status` is its registered version's status now."""
    r = run.result
    if run.status != "succeeded" or not r:
        return None
    name, version = str(r.get("name") or ""), str(r.get("version") or "")
    metrics = r.get("val_metrics")
    rows = [
        (METRIC_TITLES.get(k, k.replace("_", " ").capitalize()), v)
        for k, v in (metrics.items() if isinstance(metrics, dict) else [])
        if not isinstance(v, dict | list)
    ]
    recipe = r.get("recipe")
    recipe_facts = []
    if isinstance(recipe, dict):
        recipe_facts = [(title, recipe[k]) for k, title in RECIPE_FACTS if k in recipe]
    dataset = r.get("dataset")
    return RunResult(
        model=r.get("model") or f"{name}:{version}",
        name=name,
        version=version,
        model_status=model_status,
        metrics=rows,
        threshold=finite(r.get("threshold")),
        positive=classes[1] if len(classes) == 2 else None,
        epochs_run=as_int(r.get("epochs_run")),
        best_epoch=as_int(r.get("best_epoch")),
        wall=duration(r.get("wall_s")) if r.get("wall_s") is not None else None,
        recipe=recipe_of(run),
        recipe_facts=recipe_facts,
        cv=_cv_rows(r.get("cross_validation"), recipe),
        importance=_importance(r.get("feature_importance")),
        dataset=dataset if isinstance(dataset, dict) else {},
    )


def run_page(
    run: TrainingRunPublic,
    *,
    dataset: DatasetBrief | None,
    model_status: str | None,
    can_cancel: bool,
    now: datetime,
    notice: str | None = None,
    error: str | None = None,
) -> TrainingRunPage:
    """The page of one run. `dataset` is the dataset it names (None once deleted);
    `can_cancel` whether the viewer may cancel it (cancellable runs only)."""
    ref = str(run.params.get("dataset", ""))
    kind = (dataset.kind if dataset else None) or (
        "table" if (run.result or {}).get("cross_validation") else None
    )
    history = run.progress.get("history")
    history = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    live = run.status in LIVE_STATUSES
    span = as_int(run.progress.get("epochs")) or 0
    if not live:  # a finished run's axis ends at its last epoch
        span = max([1, *(e for h in history if (e := as_int(h.get("epoch"))) is not None)])
    chart = None
    if kind != "table" and (history or live):
        chart = training_chart(history, span, as_int(run.progress.get("best_epoch")))
    return TrainingRunPage(
        run=run,
        live=live,
        dataset_name=(dataset.name if dataset else None) or ref,
        dataset_kind=kind,
        recipe=recipe_of(run),
        numbers=live_numbers(run, now),
        now_ms=int(now.timestamp() * 1000),
        chart=chart,
        history=history,
        result=run_result(run, list(dataset.classes) if dataset else [], model_status),
        can_cancel=can_cancel and live and not run.cancel_requested,
        notice=notice,
        error=error,
    )
