"""`clearscan service-accounts ...` and `clearscan api-keys ...`: accounts for machines and their
keys, from the shell on the server (audited as cli:<os user>)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from clearscan.auth import apikeys
from clearscan.auth.apikey_schemas import ApiKeyCreate, ServiceAccountCreate
from clearscan.auth.models import Role
from clearscan.auth.service import AuthError
from clearscan.cli.common import (
    DataDirOpt,
    cli_context,
    console,
    db_session,
    err_console,
    fail,
    load_settings,
)
from clearscan.errors import ClearScanError

accounts_app = typer.Typer(
    help="Service accounts: users for machines (a PACS router, a script) that sign in with API "
    "keys only.",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="API keys of service accounts: create (shown once), list, revoke.", no_args_is_help=True
)


def _invalid(exc: ValidationError) -> typer.Exit:
    first = exc.errors()[0]
    return fail(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", 2)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


@accounts_app.command("create")
def create_account(
    name: str,
    role: Annotated[
        str, typer.Option(help="clinician (its keys may analyse) or viewer (read only)")
    ] = "viewer",
    team: Annotated[
        list[str] | None,
        typer.Option("--team", help="A team it acts for; repeat for more (default: general)."),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a service account (no password, no browser sign-in)."""
    try:
        body = ServiceAccountCreate.model_validate({"name": name, "role": role, "teams": team})
    except ValidationError as exc:
        raise _invalid(exc) from None
    with db_session(load_settings(data_dir)) as db:
        try:
            user = apikeys.create_service_account(
                db=db,
                ctx=cli_context(),
                name=body.name,
                role=Role(body.role),
                team_names=body.teams,
            )
        except ClearScanError as exc:
            raise fail(str(exc)) from None
        joined = apikeys.team_names(db=db, users=[user])[user.id]
    console.print(
        f"created service account [bold]{user.username}[/bold] (id {user.id}, role {user.role}, "
        f"teams {', '.join(joined) or 'none'})"
    )


@accounts_app.command("list")
def list_accounts(data_dir: DataDirOpt = None) -> None:
    """List service accounts."""
    with db_session(load_settings(data_dir)) as db:
        rows, _ = apikeys.list_service_accounts(db=db, limit=10_000)
        names = apikeys.team_names(db=db, users=rows)
    table = Table("id", "name", "role", "teams", "disabled", "created")
    for u in rows:
        table.add_row(
            str(u.id),
            u.username,
            u.role,
            ", ".join(names[u.id]),
            "yes" if u.disabled else "",
            _when(u.created_at),
        )
    console.print(table)


@keys_app.command("create")
def create_key(
    account: Annotated[str, typer.Argument(help="The service account's name.")],
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. pacs-1.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="predict or read; repeat for both (default: both)."),
    ] = None,
    expires_at: Annotated[
        str | None,
        typer.Option(help="ISO 8601 date-time with an offset, e.g. 2027-01-01T00:00:00Z."),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an API key and print it this once (only its hash is kept)."""
    try:
        body = ApiKeyCreate.model_validate(
            {
                "account": account,
                "name": name,
                "scopes": scope or ["predict", "read"],
                "expires_at": expires_at,
            }
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    with db_session(load_settings(data_dir)) as db:
        try:
            row, key = apikeys.create_key(
                db=db,
                ctx=cli_context(),
                account=body.account,
                name=body.name,
                scopes=body.scopes,
                expires_at=body.expires_at,
            )
        except AuthError as exc:
            raise fail(str(exc)) from None
    err_console.print(
        f"created API key {row.id} ({row.prefix}) for [bold]{body.account}[/bold], scopes "
        f"{row.scopes}. It is shown only this once:"
    )
    # the key alone on stdout, so `KEY=$(clearscan api-keys create ...)` works
    print(key)


@keys_app.command("list")
def list_keys(
    account: Annotated[str | None, typer.Option(help="Only this service account's keys.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Leave out revoked keys.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """List API keys (never the keys themselves)."""
    with db_session(load_settings(data_dir)) as db:
        rows, _ = apikeys.list_keys(
            db=db, account=account, include_revoked=not active, limit=10_000
        )
    table = Table("id", "account", "name")
    table.add_column("prefix", no_wrap=True, min_width=12)
    for heading in ("scopes", "created", "expires", "last used", "revoked"):
        table.add_column(heading)
    for k, owner in rows:
        table.add_row(
            str(k.id),
            owner,
            k.name,
            k.prefix,
            k.scopes,
            _when(k.created_at),
            _when(k.expires_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[int, typer.Argument(min=1, help="The key's id (see `api-keys list`).")],
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke an API key: refused from the next request on."""
    with db_session(load_settings(data_dir)) as db:
        try:
            row, account = apikeys.revoke_key(db=db, ctx=cli_context(), key_id=key_id)
        except AuthError as exc:
            raise fail(str(exc)) from None
    console.print(f"revoked API key {row.id} ({row.prefix}) of [bold]{account}[/bold]")
