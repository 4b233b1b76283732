"""`clearscan worker`: run jobs delivered by the broker (CLEARSCAN_BROKER_URL)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from clearscan.cli.common import DataDirOpt, console, fail, load_settings
from clearscan.config import ConfigError


def worker(
    queues: Annotated[
        str,
        typer.Option(
            "--queues", "-Q", help="Comma-separated job queues to take (e.g. default,gpu)."
        ),
    ] = "default",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64, help="Jobs run at once.")
    ] = 1,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve the job metrics of this worker's processes for Prometheus (0: off).",
        ),
    ] = 9101,
    data_dir: DataDirOpt = None,
) -> None:
    """Run training, evaluation and batch jobs from the queue (needs CLEARSCAN_BROKER_URL and
    a database at the current schema: run `clearscan db upgrade` first)."""
    from clearscan.observability.multiproc import shared_metrics_dir

    # before anything imports prometheus_client, in this process and its pool
    with shared_metrics_dir("clearscan-worker-metrics-") if metrics_port else nullcontext():
        _run(queues, concurrency, metrics_port, data_dir)


def _run(queues: str, concurrency: int, metrics_port: int, data_dir: Path | None) -> None:
    from clearscan.bootstrap import blob_store, build_worker_state, check_device
    from clearscan.db.migrate import check_current
    from clearscan.jobs import worker as jobs_worker
    from clearscan.jobs.celery_queue import broker_kind
    from clearscan.observability.logging import configure_logging

    settings = load_settings(data_dir)
    configure_logging(settings.log_level)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        raise fail("--queues names no queue", 2)
    try:
        if not settings.broker_url:
            raise ConfigError(
                "CLEARSCAN_BROKER_URL is not set: without a broker, `clearscan serve` runs the "
                "jobs itself"
            )
        broker_kind(settings.broker_url)
        check_current(settings.sqlalchemy_url)
        blob_store(settings)
        check_device(settings.device)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    metrics = f", metrics on :{metrics_port}/metrics" if metrics_port else ""
    console.print(
        f"ClearScan worker: queues {', '.join(names)}, concurrency {concurrency}{metrics} "
        f"(data: {settings.data_dir})"
    )
    try:
        jobs_worker.run(
            settings,
            queues=names,
            concurrency=concurrency,
            build=build_worker_state,
            loglevel=settings.log_level,
            metrics_port=metrics_port,
        )
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
