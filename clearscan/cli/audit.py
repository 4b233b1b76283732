"""`clearscan audit ...`: verify the trail, anchor its head, export it, archive old events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from clearscan.audit import export, service
from clearscan.audit.actions import Action
from clearscan.audit.anchors import AnchorError
from clearscan.audit.archive import ArchiveError, archive_older_than, verify_archive
from clearscan.cli.common import DataDirOpt, cli_context, console, db_session, fail, load_settings

app = typer.Typer(help="Verify, anchor, export and archive the audit trail.", no_args_is_help=True)


@app.command("verify")
def verify(data_dir: DataDirOpt = None) -> None:
    """Check the keyed chain and compare it with its anchors (exit 1 when broken)."""
    with db_session(load_settings(data_dir)) as db:
        r = service.verify_chain(db=db)
    if not r.ok:
        raise fail(f"audit chain broken at event {r.first_bad_seq}: {r.reason}", 1)
    console.print(f"audit chain ok: {r.checked} events checked")


@app.command("anchor")
def anchor(
    start: Annotated[
        bool,
        typer.Option(
            "--start",
            help="Start a new anchor file where the configured one went missing (audited).",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Verify the chain, then write its head to the anchor file (and syslog, S3 if set)."""
    with db_session(load_settings(data_dir)) as db:
        try:
            a = service.anchor_now(db=db, ctx=cli_context(), start=start)
        except AnchorError as exc:
            raise fail(str(exc), 1) from None
    console.print(f"anchored event {a.seq} ({a.hash[:16]}...) at {a.at}")


@app.command("export")
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "json",
    since: Annotated[str | None, typer.Option(help="ISO 8601 date-time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 date-time, exclusive")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="File (default: stdout)")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Export events with the fields of DICOM PS3.15 A.5.3 (audited)."""
    if fmt not in ("csv", "json"):
        raise fail(f"--format must be csv or json, not {fmt!r}", 2)
    try:
        start, end = export.parse_when(since, "--since"), export.parse_when(until, "--until")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if start is not None and end is not None and start > end:
        raise fail("--since must not be later than --until", 2)
    settings = load_settings(data_dir)
    with db_session(settings) as db:
        details = {"format": fmt, "since": since, "until": until, "to": "file" if out else "stdout"}
        entry = service.Entry(Action.AUDIT_EXPORT, object_type="audit", details=details)
        service.record(entry, db=db, ctx=cli_context())
        bind = db.get_bind()
        rows = export.events(lambda: Session(bind=bind), since=start, until=end)
        chunks = export.as_csv(rows) if fmt == "csv" else export.as_json(rows)
        if out is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
            return
        with out.open("w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                f.write(chunk)
    console.print(f"exported to {out}")


@app.command("archive")
def archive(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Archive events older than DAYS.")
    ],
    data_dir: DataDirOpt = None,
) -> None:
    """Move events older than DAYS to an archive file (checked before they leave the table)."""
    settings = load_settings(data_dir)
    with db_session(settings) as db:
        try:
            r = archive_older_than(db=db, settings=settings, days=older_than, ctx=cli_context())
        except ArchiveError as exc:
            raise fail(str(exc), 1) from None
    if r is None:
        console.print(f"no events older than {older_than:g} days")
        return
    console.print(f"archived events {r.first_seq}-{r.last_seq} ({r.count}) to {r.path}")


@app.command("verify-archive")
def verify_archive_cmd(
    path: Annotated[Path, typer.Argument(help="An archive file (audit-*.jsonl).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Check an archive file's hashes and compare it with its checkpoint."""
    with db_session(load_settings(data_dir)) as db:
        try:
            r = verify_archive(path, db=db)
        except ArchiveError as exc:
            raise fail(str(exc), 1) from None
    console.print(f"archive ok: events {r.first_seq}-{r.last_seq} ({r.count}), sha256 {r.sha256}")
