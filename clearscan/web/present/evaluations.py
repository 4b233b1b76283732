"""Evaluation tables of a model page: one row per evaluation job, and side-by-side tables of the
versions evaluated on the same dataset content and split, the better value of each row marked.

Evaluation results are the JSON an evaluation job stored (metrics, ci95, calibration, model,
dataset); every value is read defensively, as a failed or older job may lack any of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clearscan.registry.ref import version_key
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.present.numbers import as_int, finite, fixed3

SPLITS = ("train", "val", "test")
# Side-by-side rows: metric key, title, whether higher is better.
COMPARED_METRICS = (
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced accuracy", True),
    ("auc", "AUC", True),
    ("sensitivity", "Sensitivity", True),
    ("specificity", "Specificity", True),
    ("ece", "ECE (calibration error)", False),
)

Result = dict[str, Any]


@dataclass(frozen=True)
class MetricCell:
    value: str  # three decimals or a dash
    ci: str | None  # "[lo, hi]" of the 95% interval


@dataclass(frozen=True)
class EvaluationRow:
    id: str
    version: str
    dataset: str
    split: str
    n: int | None
    accuracy: MetricCell | None  # None until the evaluation succeeded
    auc: MetricCell | None
    ece: str | None
    status: str
    error: str | None
    progress: str
    created_at: datetime
    created_by: str | None
    report: str | None  # URL of the HTML report


@dataclass(frozen=True)
class ComparisonCell:
    version: str
    value: str
    ci: str | None
    best: bool


@dataclass(frozen=True)
class ComparisonRow:
    key: str
    title: str
    higher: bool  # higher is better
    cells: list[ComparisonCell]


@dataclass(frozen=True)
class ComparedVersion:
    version: str
    id: str  # the evaluation shown for it


@dataclass(frozen=True)
class Comparison:
    dataset: str
    hash: str
    split: str
    n: list[int]
    versions: list[ComparedVersion]
    rows: list[ComparisonRow]


def metric_value(result: Result, key: str) -> float | None:
    if key == "ece":
        cal = result.get("calibration")
        return finite(cal.get("ece")) if isinstance(cal, dict) else None
    metrics = result.get("metrics")
    return finite(metrics.get(key)) if isinstance(metrics, dict) else None


def metric_interval(result: Result, key: str) -> str | None:
    """`[lo, hi]` of the metric's 95% interval, or None."""
    ci = result.get("ci95")
    pair = ci.get(key) if isinstance(ci, dict) else None
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    lo, hi = finite(pair[0]), finite(pair[1])
    return None if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def _cell(result: Result, key: str) -> MetricCell:
    return MetricCell(value=fixed3(metric_value(result, key)), ci=metric_interval(result, key))


def succeeded_result(job: TrainingRunPublic) -> Result | None:
    return job.result if job.status == "succeeded" and isinstance(job.result, dict) else None


def progress_text(job: TrainingRunPublic) -> str:
    if job.status == "queued":
        return "waiting for the worker"
    if job.status != "running":
        return ""
    p = job.progress
    done, total = as_int(p.get("done")), as_int(p.get("total"))
    stage = str(p.get("stage") or "starting")
    return f"{stage} {done}/{total}" if done is not None and total else stage


def evaluation_rows(
    evals: Sequence[TrainingRunPublic], dataset_names: Mapping[str, str]
) -> list[EvaluationRow]:
    """One row per evaluation. `dataset_names` maps the dataset id or name each job was asked
    for to the dataset's name (a deleted dataset keeps the reference)."""
    rows = []
    for job in evals:
        r = succeeded_result(job)
        ref = str(job.params.get("dataset", ""))
        ds = r.get("dataset") if r else None
        ds_name = ds.get("name") if isinstance(ds, dict) else None
        rows.append(
            EvaluationRow(
                id=job.id,
                version=str(job.params.get("model", "")).partition(":")[2],
                dataset=str(ds_name or dataset_names.get(ref) or ref),
                split=str(job.params.get("split", "")),
                n=as_int(r.get("n")) if r else None,
                accuracy=_cell(r, "accuracy") if r else None,
                auc=_cell(r, "auc") if r else None,
                ece=fixed3(metric_value(r, "ece")) if r else None,
                status=job.status,
                error=job.error,
                progress=progress_text(job),
                created_at=job.created_at,
                created_by=job.created_by,
                report=f"/api/v1/evaluations/{job.id}/report.html" if r else None,
            )
        )
    return rows


def side_by_side(evals: Sequence[TrainingRunPublic]) -> list[Comparison]:
    """Per (dataset hash, split) evaluated for two or more versions: the metrics of each
    version's latest succeeded evaluation (`evals` is newest first)."""
    groups: dict[tuple[str, str], dict[str, tuple[TrainingRunPublic, Result]]] = {}
    for job in evals:  # newest first: the first one per version is its latest
        r = succeeded_result(job)
        model, ds = (r.get("model"), r.get("dataset")) if r else (None, None)
        if r is None or not isinstance(model, dict) or not isinstance(ds, dict):
            continue
        group = (str(ds.get("hash", "")), str(r.get("split", "")))
        groups.setdefault(group, {}).setdefault(str(model.get("version", "")), (job, r))
    tables = []
    for (ds_hash, split), per in groups.items():
        if len(per) < 2:
            continue
        versions = sorted(per, key=lambda v: (version_key(v), v))
        named = per[versions[0]][1].get("dataset")
        tables.append(
            Comparison(
                dataset=str(named.get("name") or "") if isinstance(named, dict) else "",
                hash=ds_hash,
                split=split,
                n=sorted({n for _, r in per.values() if (n := as_int(r.get("n"))) is not None}),
                versions=[ComparedVersion(version=v, id=per[v][0].id) for v in versions],
                rows=_compared_rows({v: per[v][1] for v in versions}),
            )
        )
    return tables


def _compared_rows(results: Mapping[str, Result]) -> list[ComparisonRow]:
    """One row per metric any version has, in COMPARED_METRICS order; a tie marks nothing."""
    rows = []
    for key, title, higher in COMPARED_METRICS:
        values = {v: metric_value(r, key) for v, r in results.items()}
        present = [x for x in values.values() if x is not None]
        if not present:
            continue
        best = max(present) if higher else min(present)
        marked = len(set(present)) > 1
        cells = [
            ComparisonCell(
                version=v,
                value=fixed3(x),
                ci=metric_interval(results[v], key) if key != "ece" else None,
                best=marked and x == best,
            )
            for v, x in values.items()
        ]
        rows.append(ComparisonRow(key=key, title=title, higher=higher, cells=cells))
    return rows
