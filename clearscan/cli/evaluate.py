"""`clearscan evaluate`: evaluate one model version (or two, side by side) on a dataset split,
in the foreground. Each evaluation is a job row like one submitted through the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clearscan.cli.common import (
    DataDirOpt,
    cli_context,
    console,
    db_session,
    err_console,
    fail,
    load_settings,
    open_blobs,
)


def evaluate(
    models: Annotated[
        list[str], typer.Argument(help="MODEL[:VERSION], or two of them to compare side by side.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name or id.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    report: Annotated[
        Path | None, typer.Option(help="Write the HTML report(s) here (a folder).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """ACC, balanced ACC, AUC, sensitivity and specificity with 95% bootstrap intervals,
    per-class precision/recall/F1, confusion matrix, ROC and calibration (ECE)."""
    from sqlalchemy.orm import sessionmaker

    from clearscan.bootstrap import build_registry
    from clearscan.errors import ClearScanError
    from clearscan.jobs import service as jobs
    from clearscan.training import service
    from clearscan.training.evaluation import (
        EVAL_KIND,
        EvalRequest,
        compare,
        resolve,
        run_evaluation,
    )

    if not 1 <= len(models) <= 2:
        raise fail("give one model, or two to compare")
    settings = load_settings(data_dir)
    results: list[dict[str, Any]] = []
    with db_session(settings) as db:
        sessions = sessionmaker(bind=db.get_bind(), expire_on_commit=False)
        registry = build_registry(settings, sessions)
        blobs = open_blobs(settings)
        resolved = []
        for ref in models:  # every reference is checked before anything runs
            req = EvalRequest(model=ref, dataset=dataset, split=split)
            try:
                entry, ds, _ = resolve(db, registry, req)
            except ClearScanError as exc:
                raise fail(exc.detail) from None
            resolved.append((req, entry, ds))
        for req, entry, ds in resolved:
            job = service.submit_evaluation(  # run here: no queue, no second attempt
                db=db,
                ctx=cli_context(),
                registry=registry,
                request=req,
                queue=None,
                max_attempts=1,
            )
            if not jobs.claim(sessions=sessions, job_id=job.id, worker=jobs.worker_name()):
                raise fail(f"job {job.id} was claimed by a running server")

            def handler(c: jobs.JobContext) -> dict[str, Any]:
                return run_evaluation(c, sessions=sessions, blobs=blobs, registry=registry)

            with console.status(f"evaluating {entry.manifest.ref} on {ds.name} ({split})"):
                done = jobs.run_claimed(
                    sessions=sessions, job_id=job.id, handlers={EVAL_KIND: handler}
                )
            if done.status != "succeeded" or not done.result:
                raise fail(f"evaluation {job.id} {done.status}: {done.error}")
            results.append({"id": job.id, **done.result})
            if report is not None:
                report.mkdir(parents=True, exist_ok=True)
                path = report / f"evaluation-{job.id}.html"
                path.write_bytes(blobs.get(done.result["report_blob"]))
                err_console.print(f"report: {path}")
    if as_json:
        out: Any = results[0] if len(results) == 1 else compare(results[0], results[1])
        sys.stdout.write(json.dumps(out) + "\n")
        return
    _print(results)


def _print(results: list[dict[str, Any]]) -> None:
    first = results[0]
    console.print(
        f"dataset {first['dataset']['name']} ({first['split']}, n = {first['n']}), "
        f"hash {first['dataset']['hash'][:12]}"
    )
    table = Table("metric", *(f"{r['model']['name']}:{r['model']['version']}" for r in results))
    for k in first["metrics"]:
        cells = []
        for r in results:
            v, ci = r["metrics"].get(k), r["ci95"].get(k)
            cells.append(
                f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
                if v is not None and ci and None not in ci
                else "n/a"
                if v is None
                else f"{v:.4f}"
            )
        table.add_row(k, *cells)
    table.add_row("ECE", *(f"{r['calibration']['ece']:.4f}" for r in results))
    console.print(table)
    for r in results:
        console.print(f"{r['model']['name']}:{r['model']['version']} confusion (rows true):")
        labels = r["confusion"]["labels"]
        cm = Table("", *labels)
        for lab, row in zip(labels, r["confusion"]["matrix"], strict=True):
            cm.add_row(lab, *(str(v) for v in row))
        console.print(cm)
