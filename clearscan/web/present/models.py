"""Model pages: the list, and one model's facts, versions, roll-out plan and shadow report,
evaluations with their side-by-side tables, and the evaluate form."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clearscan.datasets.service import DatasetBrief
from clearscan.inference.manifest import ModelManifest
from clearscan.registry.catalog import ModelEntry
from clearscan.registry.schemas import ModelDetail, ModelVersionPublic
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.present.cases import ModelNote, model_note
from clearscan.web.present.evaluations import (
    SPLITS,
    Comparison,
    EvaluationRow,
    evaluation_rows,
    side_by_side,
)
from clearscan.web.present.page import Page

NOTICES = {  # ?done=... after a change -> the message; {active} is the active version
    "activated": "Version {active} is now the active version.",
    "rolled-back": "Rolled back: version {active} is the active version again.",
    "rollout": "Roll-out settings saved.",
    "evaluate": "Evaluation queued: it runs in the background. Reload this page to see its "
    "result in the Evaluations list.",
}


@dataclass(frozen=True, kw_only=True)
class ModelsPage(Page):
    template = "models.html"
    models: list[ModelDetail]
    problems: list[str]  # packages that were refused (shown to admins)
    default_model: str


def rollout_form_of(plan: Mapping[str, Any]) -> dict[str, str]:
    """The roll-out form filled in with the current plan."""
    canary, shadow = plan.get("canary"), plan.get("shadow")
    return {
        "canary_version": canary["version"] if isinstance(canary, dict) else "",
        "canary_percent": str(canary["percent"]) if isinstance(canary, dict) else "",
        "shadow_version": shadow["version"] if isinstance(shadow, dict) else "",
    }


@dataclass(frozen=True, kw_only=True)
class ModelPage(Page):
    template = "model.html"
    m: ModelDetail
    manifest: ModelManifest
    note: ModelNote | None
    cam_error: str | None
    versions: list[ModelVersionPublic]
    plan: dict[str, Any] | None  # the roll-out (admins, installed models only)
    report: dict[str, Any] | None  # the shadow report
    rollout_form: dict[str, str]
    candidates: list[str]  # versions that may become canary or shadow
    evaluations: list[EvaluationRow]
    evaluations_total: int
    comparisons: list[Comparison]
    eval_versions: list[str]
    eval_datasets: list[DatasetBrief]  # what the evaluate form offers (admins only)
    eval_splits: tuple[str, ...]
    eval_form: dict[str, str]
    error: str | None = None
    notice: str | None = None


def model_page(
    entry: ModelEntry,
    status: str,
    versions: list[ModelVersionPublic],
    *,
    plan: dict[str, Any] | None,
    report: dict[str, Any] | None,
    rollout_form: dict[str, str] | None,
    evaluations: Sequence[TrainingRunPublic],
    evaluations_total: int,
    dataset_names: Mapping[str, str],
    eval_datasets: Sequence[DatasetBrief],
    eval_form: dict[str, str] | None,
    error: str | None = None,
    notice: str | None = None,
) -> ModelPage:
    """The page of the model `entry` describes (`status` its status). `evaluations` are newest
    first; `dataset_names` maps the dataset each names to its name."""
    return ModelPage(
        m=ModelDetail.of_detail(entry, status),
        manifest=entry.manifest,
        note=model_note(entry),
        cam_error=entry.cam_error,
        versions=versions,
        plan=plan,
        report=report,
        rollout_form=rollout_form or {},
        candidates=[v.version for v in versions if v.status == "inactive"],
        evaluations=evaluation_rows(evaluations, dataset_names),
        evaluations_total=evaluations_total,
        comparisons=side_by_side(evaluations),
        eval_versions=[v.version for v in versions if v.status != "unavailable"],
        eval_datasets=list(eval_datasets),
        eval_splits=SPLITS,
        eval_form=eval_form or {"version": entry.manifest.version, "dataset": "", "split": "test"},
        error=error,
        notice=notice,
    )
