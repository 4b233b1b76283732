"""Evaluation tables, class-balance bars, column summaries and training-run views, built from
plain values without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from clearscan.datasets.service import DatasetBrief
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.present.datasets import class_balance, column_rows, split_facts
from clearscan.web.present.evaluations import MetricCell, evaluation_rows, side_by_side
from clearscan.web.present.training import (
    ProgressBar,
    live_numbers,
    progress_text,
    run_list,
    run_page,
    run_result,
)

T0 = datetime(2025, 11, 24, 14, 5, tzinfo=UTC)


def job(i: int, status: str, **fields: Any) -> TrainingRunPublic:
    values: dict[str, Any] = {
        "id": f"job-{i}",
        "status": status,
        "params": {},
        "progress": {},
        "result": None,
        "error": None,
        "cancel_requested": False,
        "created_at": T0 - timedelta(minutes=i),  # job-0 is the newest
        "started_at": None,
        "finished_at": None,
        "created_by": "admin",
    }
    return TrainingRunPublic(**{**values, **fields})


def evaluation(
    i: int, version: str, *, acc: float = 0.8, ece: float = 0.1, ds_hash: str = "h1"
) -> TrainingRunPublic:
    result = {
        "model": {"name": "m", "version": version},
        "dataset": {"name": "flat", "hash": ds_hash},
        "split": "test",
        "n": 20,
        "metrics": {"accuracy": acc, "auc": 0.9},
        "ci95": {"accuracy": [acc - 0.1, acc + 0.1], "auc": [0.8, None]},
        "calibration": {"ece": ece},
    }
    params = {"model": f"m:{version}", "dataset": "ds-id", "split": "test"}
    return job(i, "succeeded", params=params, result=result)


def test_evaluation_rows_show_results_progress_and_errors():
    running = job(1, "running", params={"model": "m:1.0.0", "dataset": "ds-id", "split": "val"})
    running.progress.update(stage="predicting", done=3, total=20)
    rows = evaluation_rows(
        [
            evaluation(0, "1.0.0"),
            running,
            job(2, "queued", params={"model": "m:1.0.0", "dataset": "gone"}),
            job(3, "failed", params={"model": "m:2.0.0"}, error="no such split"),
        ],
        {"ds-id": "flat"},
    )
    done, run, queued, failed = rows
    assert done.version == "1.0.0" and done.dataset == "flat" and done.n == 20
    assert done.accuracy == MetricCell("0.800", "[0.700, 0.900]")
    assert done.auc == MetricCell("0.900", None)  # an interval with a missing end is left out
    assert done.ece == "0.100" and done.report == "/api/v1/evaluations/job-0/report.html"
    assert run.progress == "predicting 3/20" and run.accuracy is None and run.report is None
    assert run.dataset == "flat" and run.split == "val"
    assert queued.progress == "waiting for the worker" and queued.dataset == "gone"
    assert failed.error == "no such split" and failed.progress == "" and failed.ece is None


def test_side_by_side_orders_versions_and_marks_the_better_value():
    evals = [
        evaluation(0, "1.10.0", acc=0.9, ece=0.2),
        evaluation(1, "1.9.0", acc=0.7, ece=0.05),
        evaluation(2, "1.9.0", acc=0.1, ece=0.9),  # older: not the one shown for 1.9.0
        evaluation(3, "1.0.0", ds_hash="other"),  # alone on its dataset: no table
        job(4, "failed", params={"model": "m:3.0.0"}),
    ]
    (table,) = side_by_side(evals)
    assert [v.version for v in table.versions] == ["1.9.0", "1.10.0"]  # by version precedence
    assert [v.id for v in table.versions] == ["job-1", "job-0"]
    assert table.dataset == "flat" and table.hash == "h1" and table.n == [20]
    rows = {r.key: r for r in table.rows}
    assert list(rows) == ["accuracy", "auc", "ece"]  # metrics nobody has are left out
    assert [c.best for c in rows["accuracy"].cells] == [False, True]  # higher is better
    assert [c.best for c in rows["ece"].cells] == [True, False]  # lower is better
    assert [c.best for c in rows["auc"].cells] == [False, False]  # a tie marks nothing
    assert rows["ece"].cells[0].ci is None and rows["accuracy"].cells[0].ci == "[0.600, 0.800]"


def test_class_balance_bars_add_up():
    balance = class_balance(
        ["a", "b", "c"], {"train": {"a": 3, "b": 1, "c": 0}, "val": {"a": 0, "b": 0, "c": 0}}
    )
    train, val = balance.rows
    assert train.counts == [3, 1, 0] and train.total == 4
    assert [(s.label, s.x, s.width) for s in train.segments] == [
        ("a", "0.000", "75.000"),
        ("b", "75.000", "25.000"),
    ]
    assert val.segments == [] and val.total == 0
    assert balance.totals == [3, 1, 0] and balance.total == 4
    assert [c.slot for c in balance.classes] == [0, 1, 2]


def test_column_rows_and_split_facts():
    info = {
        "target": "label",
        "columns": [
            {"name": "label", "type": "categorical", "values": ["x", "y"], "distinct": 3},
            {
                "name": "age",
                "type": "numeric",
                "missing": 2,
                "min": 1.0,
                "max": 90.5,
                "mean": 40.25,
            },
        ],
    }
    label, age = column_rows(info)
    assert label.role == "target" and label.values == "x, y" and label.more_values
    assert label.stats is None
    assert age.role is None and age.stats == ["1", "90.5", "40.25", "—"]
    assert split_facts({"validation": "random", "fraction": 0.15, "seed": 0}) == [
        ("Validation split", "random"),
        ("Share of train", "15%"),
        ("Seed", "0"),
    ]
    assert split_facts(None) == []


def test_run_list_and_progress_lines():
    running = job(0, "running", params={"dataset": "ds-id"})
    running.progress.update(epoch=3, epochs=10, best_val_auc=0.81)
    done = job(1, "succeeded", params={"dataset": "gone"}, result={"epochs_run": 1})
    stopped = job(2, "failed", progress={"stage": "loading", "step": 2, "steps": 5})
    items = run_list([running, done, stopped], {"ds-id": brief()})
    assert [i.dataset for i in items] == ["flat", "gone", ""]
    assert [i.progress for i in items] == [
        "epoch 3/10",
        "done · 1 epoch",
        "stopped at loading (2/5)",
    ]
    assert items[0].best_auc == 0.81 and items[0].recipe == "default"
    assert progress_text(job(3, "queued")) == "waiting for the worker"
    assert progress_text(job(4, "cancelled")) == "—"


def brief(kind: str = "images") -> DatasetBrief:
    return DatasetBrief("ds-id", "flat", kind, 40, ["no", "yes"], ["train", "val"])


def test_live_numbers_of_a_running_and_a_finished_run():
    run = job(0, "running", started_at=T0)
    run.progress.update(stage="training", epoch=4, epochs=10, best_val_auc=0.8, best_epoch=3)
    run.progress.update(eta_s=65, loss=0.25)
    numbers = live_numbers(run, T0 + timedelta(seconds=185))
    assert numbers.bar == ProgressBar(4, 10) and numbers.epoch == "4 / 10"
    assert numbers.best == "0.800 (epoch 3)" and numbers.loss == "0.250"
    assert numbers.elapsed == "3 min 05 s" and numbers.eta == "1 min 05 s" and not numbers.steps
    done = job(1, "succeeded", started_at=T0, finished_at=T0 + timedelta(seconds=45))
    numbers = live_numbers(done, T0 + timedelta(days=1))
    assert numbers.stage == "finished" and numbers.bar == ProgressBar(1, 1)
    assert numbers.elapsed == "45 s" and numbers.eta == "—"
    failed = live_numbers(job(2, "failed", progress={"stage": "loading"}), T0)
    assert failed.stage == "failed while loading" and failed.bar is None


def test_run_result_ranks_recipes_and_scales_importance():
    result = {
        "name": "tab",
        "version": "1.0.0",
        "recipe": "random-forest",
        "val_metrics": {"auc": 0.9, "n": 12, "confusion": [[1]]},
        "cross_validation": {"logistic": {"auc_mean": 0.8}, "random-forest": {"auc_mean": 0.9}},
        "feature_importance": [
            {"feature": "a", "importance": 0.2},
            {"feature": "b", "importance": -1},
        ],
        "threshold": 0.4,
    }
    view = run_result(job(0, "succeeded", result=result), ["no", "yes"], "inactive")
    assert view is not None and view.model == "tab:1.0.0" and view.model_status == "inactive"
    assert view.metrics == [("AUC", 0.9), ("Validation items", 12)]  # nested values left out
    assert [(r.recipe, r.chosen) for r in view.cv] == [("random-forest", True), ("logistic", False)]
    assert [b.width for b in view.importance] == ["100.0", "0.0"]
    assert view.positive == "yes" and view.threshold == 0.4 and view.dataset == {}
    assert run_result(job(1, "running", result=result), [], None) is None


def test_run_page_draws_a_chart_for_image_runs_only():
    history = [{"epoch": e, "loss": 1.0 / e, "val_auc": 0.6} for e in (1, 2)]
    run = job(0, "succeeded", params={"dataset": "ds-id"}, progress={"history": history})
    page = run_page(run, dataset=brief(), model_status=None, can_cancel=True, now=T0)
    assert page.chart is not None and page.chart.span == 2  # a finished run's last epoch
    assert page.dataset_name == "flat" and page.dataset_kind == "images"
    assert not page.can_cancel and not page.live  # nothing left to cancel
    table = run_page(run, dataset=brief("table"), model_status=None, can_cancel=True, now=T0)
    assert table.chart is None
    queued = job(1, "queued", params={"dataset": "gone"})
    page = run_page(queued, dataset=None, model_status=None, can_cancel=True, now=T0)
    assert page.can_cancel and page.chart is not None and page.chart.empty
    assert page.dataset_name == "gone" and page.dataset_kind is None
