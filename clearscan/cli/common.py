"""Shared CLI helpers: settings from options + environment, DB sessions, audit context."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session

from clearscan.audit.service import RequestContext
from clearscan.config import ConfigError, Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.storage import BlobStore

console = Console()
err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $CLEARSCAN_DATA_DIR or ./clearscan-data)."
    ),
]


def load_settings(data_dir: Path | None = None) -> Settings:
    try:
        return Settings(data_dir=data_dir) if data_dir else Settings()
    except Exception as exc:  # pydantic validation of the environment
        err_console.print(f"[red]invalid settings:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}")  # messages may hold [brackets]
    return typer.Exit(code)


@contextmanager
def db_session(settings: Settings) -> Iterator[Session]:
    from clearscan.bootstrap import initialise

    try:
        initialise(settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with make_session_factory(engine)() as db:
            yield db
    finally:
        engine.dispose()


def open_blobs(settings: Settings) -> BlobStore:
    """The blob store CLEARSCAN_BLOB_URL names; an unusable one ends the command (exit 2)."""
    from clearscan.bootstrap import blob_store

    try:
        return blob_store(settings)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def cli_context() -> RequestContext:
    try:
        who = getpass.getuser()
    except Exception:
        who = "unknown"
    return RequestContext(actor=f"cli:{who}"[:64], client_addr="local")
