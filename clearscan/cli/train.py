"""`clearscan train`: run a training run in the foreground with a progress bar. The run is a job
row like one submitted through the API (same handler, same audit), claimed by this process."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from clearscan.cli.common import (
    DataDirOpt,
    cli_context,
    db_session,
    err_console,
    fail,
    load_settings,
    open_blobs,
)


def train(
    dataset: Annotated[str, typer.Option(help="Dataset name or id.")],
    recipe: Annotated[
        str | None, typer.Option(help="cnn-small (28-32 px) or cnn-small-64; default by dataset.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same model.")] = 0,
    model_name: Annotated[
        str | None, typer.Option(help="Model name (default: the dataset name).")
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="Sensor streams: samples per window (default 64).")
    ] = None,
    step: Annotated[
        int | None, typer.Option(help="Sensor streams: samples between windows (default 32).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary with the metrics.")
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Train a model on a dataset; the last line printed is the registered NAME:VERSION
    (a new, inactive version: activate it with `clearscan models activate`)."""
    from sqlalchemy.orm import sessionmaker

    from clearscan.bootstrap import model_store
    from clearscan.errors import ClearScanError
    from clearscan.jobs import service as jobs
    from clearscan.training import service
    from clearscan.training.runs import TRAIN_KIND, TrainRequest, run_training
    from clearscan.training.trainers import TrainResult

    settings = load_settings(data_dir)
    req = TrainRequest(
        dataset=dataset,
        recipe=recipe,
        epochs=epochs,
        seed=seed,
        model_name=model_name,
        window=window,
        step=step,
    )
    with db_session(settings) as db:
        try:
            # run here: no queue, and no second attempt if this command is killed
            job = service.submit_run(
                db=db, ctx=cli_context(), request=req, queue=None, max_attempts=1
            )
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        job_id = job.id
        sessions = sessionmaker(bind=db.get_bind(), expire_on_commit=False)
    if not jobs.claim(sessions=sessions, job_id=job_id, worker=jobs.worker_name()):
        raise fail(f"job {job_id} was claimed by a running server; watch it there")
    blobs = open_blobs(settings)
    store = model_store(settings)

    def handler(c: jobs.JobContext) -> dict[str, Any]:
        return run_training(c, sessions=sessions, blobs=blobs, store=store)

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None, info="")

        def on_progress(p: dict[str, Any]) -> None:
            if p.get("stage") == "training" and p.get("epochs"):
                info = (
                    f"loss {p.get('loss', 0):.4f} val AUC {p.get('val_auc', 0):.4f}"
                    if "loss" in p
                    else ""
                )
                bar.update(
                    task,
                    description=f"epoch {p.get('epoch', 0)}/{p['epochs']}",
                    total=p["epochs"],
                    completed=p.get("epoch", 0),
                    info=info,
                )
            elif "stage" in p:
                bar.update(task, description=str(p["stage"]))

        try:
            finished = jobs.run_claimed(
                sessions=sessions,
                job_id=job_id,
                handlers={TRAIN_KIND: handler},
                on_progress=on_progress,
            )
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was registered", 130) from None
    if finished.status != "succeeded" or not finished.result:
        raise fail(f"training run {job_id} {finished.status}: {finished.error}")
    result = finished.result
    if as_json:
        sys.stdout.write(json.dumps({"run": job_id, **result}) + "\n")
        return
    trained = TrainResult.from_json(result)
    v = trained.val_metrics
    how = (
        f"{trained.recipe}, chosen by cross-validation"
        if trained.kind == "table"
        else f"{trained.epochs_run} epochs, {trained.wall_s} s"
    )
    err_console.print(
        f"validation: ACC {v['accuracy']:.4f}  AUC {v['auc']:.4f}  balanced ACC "
        f"{v['balanced_accuracy']:.4f}  ({how})"
    )
    sys.stdout.write(trained.model + "\n")
