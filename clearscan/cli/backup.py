"""`clearscan backup ...`: make, check, list and restore backups (docs/operations.md).

Exit codes: 0 done; 1 the backup or restore failed (the message says why); 2 unusable settings
or options; 3 the backup is damaged (files missing or not matching the manifest); 4 the restore
target is not empty; 5 the backup comes from a newer ClearScan; 6 the encryption key is missing
or wrong; 7 restored, but a check afterwards failed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from clearscan.backup import crypto, options, service
from clearscan.backup.errors import BackupError
from clearscan.backup.target import parse_backup
from clearscan.cli.common import DataDirOpt, console, err_console, fail, load_settings, open_blobs
from clearscan.config import ConfigError, Settings

app = typer.Typer(
    help="Back up, verify, list and restore (database, blobs, models).", no_args_is_help=True
)

KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="File holding the backup key (default: $CLEARSCAN_BACKUP_KEY); for a backup made "
        "with an earlier key.",
    ),
]


def _say(line: str) -> None:
    console.print(f"  {escape(line)}")


def _key(settings: Settings, key_file: Path | None) -> bytes | None:
    if key_file is not None:
        try:
            return crypto.parse_key(key_file.read_text())
        except OSError as exc:
            raise fail(f"cannot read the key file {key_file}: {exc.strerror or exc}", 6) from None
    return options.key(settings)


def _failed(exc: BackupError) -> typer.Exit:
    return fail(exc.detail, exc.exit_code)


@app.command("create")
def create(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Folder or s3://bucket/prefix (default: $CLEARSCAN_BACKUP_TO, else "
            "<data dir>/backups).",
        ),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Then delete old backups there by CLEARSCAN_BACKUP_RETENTION(_DAYS).",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Back up the database, every blob it references and the model store, while the server
    runs (encrypted when CLEARSCAN_BACKUP_KEY is set)."""
    from clearscan.bootstrap import model_store

    settings = load_settings(data_dir)
    started = time.monotonic()
    try:
        key = options.key(settings)
        location = options.destination(settings, to)
        sources = service.Sources(
            database_url=settings.sqlalchemy_url,
            blobs=open_blobs(settings),
            models_root=model_store(settings).root,
            data_dir=settings.data_dir,
        )
        console.print(f"backing up to {escape(location.url)}")
        made = service.create(sources, location, key=key, progress=_say)
        pruned = (
            service.prune(
                location,
                keep=settings.backup_retention,
                max_age_days=settings.backup_retention_days,
            )
            if prune
            else []
        )
    except BackupError as exc:
        raise _failed(exc) from None
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    took = time.monotonic() - started
    sealed = f"encrypted, key id {made.encryption.key_id}" if made.encryption else "not encrypted"
    console.print(
        f"[green]backup {made.name}[/green]: {len(made.blobs)} blobs, {len(made.models)} model "
        f"files, {made.total_bytes / 2**20:.1f} MiB, {sealed}, {took:.1f} s"
    )
    console.print(f"  at {escape(location.url.rstrip('/'))}/{made.name}")
    if made.missing_blobs:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(made.missing_blobs)} blobs the database references "
            f"were already missing from the blob store (listed in the manifest): "
            f"{', '.join(made.missing_blobs[:5])}"
        )
    for name in pruned:
        console.print(f"  pruned {name}")


@app.command("verify")
def verify(
    backup: Annotated[
        str, typer.Argument(help="The backup: its folder or s3://bucket/prefix/NAME.")
    ],
    key_file: KeyFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Read every file of a backup and check it against the manifest (sha256 and size), and the
    database dump inside. Exit 0 when it would restore."""
    settings = load_settings(data_dir)
    started = time.monotonic()
    try:
        location, name = parse_backup(backup, options.s3_options(settings))
        manifest = service.verify(location, name, key=_key(settings, key_file), progress=_say)
    except BackupError as exc:
        raise _failed(exc) from None
    console.print(
        f"[green]backup {manifest.name} is good[/green]: {len(manifest.files())} files, "
        f"{manifest.total_bytes / 2**20:.1f} MiB checked in {time.monotonic() - started:.1f} s "
        f"(schema {manifest.alembic_revision}, {manifest.database.kind}, made by ClearScan "
        f"{manifest.app_version} at {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC)"
    )


@app.command("list")
def list_cmd(
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Folder or s3://bucket/prefix (default: $CLEARSCAN_BACKUP_TO, else "
            "<data dir>/backups).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """List the backups at a destination, oldest first."""
    settings = load_settings(data_dir)
    try:
        location = options.destination(settings, at)
        found = service.list_backups(location)
    except BackupError as exc:
        raise _failed(exc) from None
    if as_json:
        rows = [
            {
                "name": b.name,
                "created_at": b.manifest.created_at.isoformat() if b.manifest else None,
                "database": b.manifest.database.kind if b.manifest else None,
                "schema": b.manifest.alembic_revision if b.manifest else None,
                "bytes": b.manifest.total_bytes if b.manifest else None,
                "blobs": len(b.manifest.blobs) if b.manifest else None,
                "encrypted": (b.manifest.encryption is not None) if b.manifest else None,
                "problem": b.problem,
            }
            for b in found
        ]
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table("name", "made (UTC)", "database", "schema", "size", "blobs", "encrypted")
    for b in found:
        m = b.manifest
        if m is None:
            table.add_row(b.name, "", "", "", "", "", f"[red]{escape(b.problem or '')}[/red]")
            continue
        table.add_row(
            m.name,
            f"{m.created_at:%Y-%m-%d %H:%M}",
            m.database.kind,
            m.alembic_revision or "",
            f"{m.total_bytes / 2**20:.1f} MiB",
            str(len(m.blobs)),
            m.encryption.key_id if m.encryption else "no",
        )
    console.print(table)
    console.print(f"{len(found)} backups at {escape(location.url)}")


@app.command("restore")
def restore(
    source: Annotated[
        str, typer.Option("--from", help="The backup: its folder or s3://bucket/prefix/NAME.")
    ],
    into: Annotated[
        Path, typer.Option("--into", help="An empty or new folder: the restored data dir.")
    ],
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="An empty PostgreSQL database for a PostgreSQL backup (default: "
            "$CLEARSCAN_DATABASE_URL; SQLite backups go into the data dir).",
        ),
    ] = None,
    key_file: KeyFileOpt = None,
) -> None:
    """Restore a backup into an empty data dir (and an empty database): every file is checked
    against the manifest first; then the migrations run and the database, the audit chain and
    every blob are checked."""
    from clearscan.audit import keys as audit_keys
    from clearscan.bootstrap import blob_store, model_store

    env = load_settings(into)
    target_settings = (
        env.model_copy(update={"database_url": database_url}) if database_url is not None else env
    )
    try:
        location, name = parse_backup(source, options.s3_options(env))
        target = service.Target(
            data_dir=target_settings.data_dir,
            database_url=target_settings.sqlalchemy_url,
            open_blobs=lambda: blob_store(target_settings),
            models_root=model_store(target_settings).root,
            audit_keys=lambda: audit_keys.install(target_settings),
        )
        console.print(f"restoring {escape(name)} into {escape(str(target.data_dir))}")
        report = service.restore(location, name, target, key=_key(env, key_file), progress=_say)
    except BackupError as exc:
        raise _failed(exc) from None
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print(
        f"[green]restored {report.manifest.name}[/green] in {report.seconds:.1f} s: "
        f"{report.rows} rows in {report.tables} tables, {report.blobs_checked} blobs and "
        f"{report.models_checked} model files verified, audit chain of {report.audit_events} "
        "events verified"
    )
    console.print(
        f"  start it with CLEARSCAN_DATA_DIR={escape(str(target.data_dir))}"
        + (" and CLEARSCAN_DATABASE_URL set to the restored database" if database_url else "")
        + "; sign-ins made before the backup need CLEARSCAN_SECRET_KEY as it was"
    )


@app.command("keygen")
def keygen() -> None:
    """Print a new random backup key (for CLEARSCAN_BACKUP_KEY; keep a copy away from the
    backups: without it they cannot be restored)."""
    key = crypto.new_key()
    typer.echo(key)
    err_console.print(f"key id {crypto.key_id(crypto.parse_key(key))}")
