"""`clearscan users ...`: manage accounts from the shell (audited as cli:<os user>)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from clearscan.auth import service
from clearscan.auth.models import Role
from clearscan.auth.schemas import UserCreate, UserUpdate
from clearscan.cli.common import DataDirOpt, cli_context, console, db_session, fail, load_settings
from clearscan.teams import service as teams

app = typer.Typer(help="Create, list and change user accounts.", no_args_is_help=True)


@app.command("create")
def create(
    username: str,
    role: Annotated[Role, typer.Option(help="admin, clinician or viewer")] = Role.viewer,
    password: Annotated[
        str | None, typer.Option(help="Password (prompted, hidden, when omitted).")
    ] = None,
    team: Annotated[
        list[str] | None,
        typer.Option("--team", help="A team to join (repeatable; default: the team general)."),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a user."""
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        body = UserCreate(username=username, password=password, role=role)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", 2) from None
    with db_session(load_settings(data_dir)) as db:
        try:
            user = service.create(
                db=db,
                ctx=cli_context(),
                username=body.username,
                password=body.password,
                role=body.role,
                team_names=team or None,
            )
            joined = service.team_names(db=db, users=[user])[user.id]
        except (service.UserExists, teams.TeamUnknown) as exc:
            raise fail(str(exc)) from None
    console.print(
        f"created user [bold]{user.username}[/bold] (id {user.id}, role {user.role}, "
        f"teams {', '.join(joined) or 'none'})"
    )


@app.command("list")
def list_users(data_dir: DataDirOpt = None) -> None:
    """List users."""
    with db_session(load_settings(data_dir)) as db:
        rows, _ = service.list_users(db=db, limit=10_000)
        names = service.team_names(db=db, users=rows)
    table = Table("id", "username", "role", "teams", "disabled", "last login")
    for u in rows:
        table.add_row(
            str(u.id),
            u.username,
            u.role,
            ", ".join(names.get(u.id, [])),
            "yes" if u.disabled else "",
            u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "",
        )
    console.print(table)


def _change(
    username: str, data_dir: DataDirOpt, *, shown: object = None, **changes: object
) -> None:
    with db_session(load_settings(data_dir)) as db:
        user = service.get_by_username(db=db, username=username)
        if user is None:
            raise fail(f"user {username!r} not found")
        try:
            service.update(db=db, ctx=cli_context(), user=user, **changes)  # type: ignore[arg-type]
        except service.LastAdmin as exc:
            raise fail(str(exc)) from None
    console.print(f"updated user [bold]{username}[/bold]: {shown or changes}")


@app.command("set-teams")
def set_teams(
    username: str,
    team: Annotated[list[str] | None, typer.Argument(help="Team names (none: no team).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Replace a user's teams."""
    try:
        _change(username, data_dir, team_names=list(team or []))
    except teams.TeamUnknown as exc:
        raise fail(str(exc)) from None


@app.command("set-role")
def set_role(username: str, role: Role, data_dir: DataDirOpt = None) -> None:
    """Change a user's role."""
    _change(username, data_dir, role=role)


@app.command("disable")
def disable(
    username: str,
    enable: Annotated[bool, typer.Option("--enable", help="Re-enable instead.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Disable a user (their sessions end at once), or re-enable with --enable."""
    _change(username, data_dir, disabled=not enable)


@app.command("set-password")
def set_password(
    username: str,
    password: Annotated[
        str | None, typer.Option(help="New password (prompted, hidden, when omitted).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Set a user's password: their browser sessions end and their API tokens stop working."""
    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        body = UserUpdate(password=password)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"password: {first['msg']}", 2) from None
    _change(username, data_dir, shown="password changed", password=body.password)
