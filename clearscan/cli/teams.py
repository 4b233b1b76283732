"""`clearscan teams ...`: create and list teams from the shell (audited as cli:<os user>)."""

from __future__ import annotations

import typer
from rich.table import Table

from clearscan.cli.common import DataDirOpt, cli_context, console, db_session, fail, load_settings
from clearscan.teams import service

app = typer.Typer(help="Create and list teams (departments or sites).", no_args_is_help=True)


@app.command("create")
def create(name: str, data_dir: DataDirOpt = None) -> None:
    """Create a team."""
    with db_session(load_settings(data_dir)) as db:
        try:
            team = service.create(db=db, ctx=cli_context(), name=name)
        except (service.TeamExists, service.TeamUnknown) as exc:
            raise fail(str(exc)) from None
    console.print(f"created team [bold]{team.name}[/bold] (id {team.id})")


@app.command("list")
def list_teams(data_dir: DataDirOpt = None) -> None:
    """List teams with how many users belong to each."""
    with db_session(load_settings(data_dir)) as db:
        rows, _ = service.list_teams(db=db, scope=None, limit=10_000)
        counts = service.member_counts(db=db, team_ids=[t.id for t in rows])
    table = Table("id", "name", "members", "created")
    for t in rows:
        table.add_row(
            str(t.id), t.name, str(counts.get(t.id, 0)), t.created_at.isoformat(timespec="seconds")
        )
    console.print(table)
