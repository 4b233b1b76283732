"""The `clearscan` command."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.panel import Panel

from clearscan import __version__
from clearscan.cli import apikeys, audit, backup, datasets, models, teams, users
from clearscan.cli.common import DataDirOpt, console, fail, load_settings
from clearscan.cli.evaluate import evaluate
from clearscan.cli.measure import measure
from clearscan.cli.predict import predict
from clearscan.cli.train import train
from clearscan.cli.worker import worker
from clearscan.config import ConfigError, Settings

app = typer.Typer(
    name="clearscan",
    help="ClearScan: self-hosted medical-imaging AI. Serve UI + API, analyse images, manage users.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(users.app, name="users")
app.add_typer(teams.app, name="teams")
app.add_typer(audit.app, name="audit")
app.add_typer(apikeys.accounts_app, name="service-accounts")
app.add_typer(apikeys.keys_app, name="api-keys")
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(backup.app, name="backup")
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command("predict")(predict)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("measure")(measure)
app.command("worker")(worker)


def _version(value: bool) -> None:
    if value:
        console.print(f"clearscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """ClearScan command line."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes sharing the port (PostgreSQL only). SIGHUP replaces them one by "
            "one without dropping a request; SIGTERM lets requests in flight finish.",
        ),
    ] = 1,
    data_dir: DataDirOpt = None,
) -> None:
    """Initialise the data dir (schema, secret, first admin) and serve the UI + API."""
    import math

    import uvicorn

    from clearscan.bootstrap import initialise
    from clearscan.observability.logging import configure_logging

    settings = load_settings(data_dir)
    configure_logging(settings.log_level)
    if workers > 1 and _backend(settings) != "postgresql":
        raise fail(
            f"--workers {workers} needs PostgreSQL (CLEARSCAN_DATABASE_URL). SQLite lets one "
            "process write at a time: more processes would queue on its lock, not serve more, "
            "and ONNX Runtime already uses every core from one process. Serve SQLite with "
            "--workers 1.",
            2,
        )
    try:
        generated = initialise(settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    if generated:
        console.print(
            Panel(
                f"Created user [bold]admin[/bold] with password [bold]{generated}[/bold]\n"
                "It is shown only this once. Set CLEARSCAN_ADMIN_PASSWORD to choose it instead.",
                title="First start",
                border_style="yellow",
            )
        )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_seconds),
    }
    where = f"http://{host}:{port}  (data: {settings.data_dir})"
    if workers == 1:
        from clearscan.app import create_app

        try:
            app_ = create_app(settings, initialised=True)
        except ConfigError as exc:
            raise fail(str(exc), 2) from None
        console.print(f"ClearScan {__version__} on {where}")
        uvicorn.run(app_, **options)
        return
    # Each process builds its own app from the environment (database connections, loaded
    # models and threads cannot cross a fork), with the settings this command resolved.
    os.environ["CLEARSCAN_DATA_DIR"] = str(settings.data_dir)
    from clearscan.observability.multiproc import shared_metrics_dir

    with shared_metrics_dir():
        console.print(f"ClearScan {__version__} on {where}, {workers} processes")
        uvicorn.run(
            "clearscan.app:app_from_env",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=WORKER_START_TIMEOUT_S,
            **options,
        )


WORKER_START_TIMEOUT_S = 120  # a process that has not loaded the models by then is replaced


def _backend(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.sqlalchemy_url).get_backend_name()


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDirOpt = None,
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from clearscan.db.migrate import upgrade

    settings = load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.sqlalchemy_url, revision)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    console.print(f"database at revision {revision}")


if __name__ == "__main__":  # pragma: no cover
    app()
