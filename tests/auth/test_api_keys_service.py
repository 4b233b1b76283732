"""The API-key service on the migrated database (a rolled-back transaction per test), the CLI,
and a round trip on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from clearscan.app import create_app
from clearscan.audit.service import RequestContext
from clearscan.auth import apikeys
from clearscan.auth.models import ApiKey, Role
from clearscan.cli.main import app as cli_app
from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, login, pg_available, pg_database

CTX = RequestContext(actor="tester", client_addr="127.0.0.1")


def _account_and_key(db: Session, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    apikeys.create_service_account(db=db, ctx=CTX, name="pacs-router", role=Role.clinician)
    return apikeys.create_key(
        db=db,
        ctx=CTX,
        account="pacs-router",
        name="k",
        scopes=[apikeys.Scope.read],
        expires_at=expires_at,
    )


def test_the_row_holds_the_sha256_never_the_key(db: Session) -> None:
    row, key = _account_and_key(db)
    assert apikeys.KEY_PATTERN.match(key)
    assert row.key_hash == apikeys.hash_key(key) and len(row.key_hash) == 64
    secret = key.rsplit("_", 1)[1]
    for value in (row.key_hash, row.prefix, row.name, row.scopes, row.created_by):
        assert secret not in (value or "")
    assert key.startswith(f"csk_{row.prefix}_")
    # two keys never share a prefix or a secret
    _, other = apikeys.create_key(
        db=db, ctx=CTX, account="pacs-router", name="k2", scopes=[apikeys.Scope.predict]
    )
    assert other != key and other.split("_")[1] != row.prefix


def test_authenticate_records_last_use_once_a_minute(db: Session) -> None:
    row, key = _account_and_key(db)
    t0 = datetime.now(UTC)
    user, found = apikeys.authenticate(db=db, key=key, now=t0)
    assert user.username == "pacs-router" and found.id == row.id
    assert found.last_used_at == t0
    apikeys.authenticate(db=db, key=key, now=t0 + timedelta(seconds=30))
    db.expire_all()
    assert db.get_one(ApiKey, row.id).last_used_at == t0  # not written again
    later = t0 + timedelta(seconds=apikeys.LAST_USED_EVERY_SECONDS + 1)
    apikeys.authenticate(db=db, key=key, now=later)
    db.expire_all()
    assert db.get_one(ApiKey, row.id).last_used_at == later


def test_refusals(db: Session) -> None:
    row, key = _account_and_key(db, expires_at=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(apikeys.KeyRefused, match="expired"):
        apikeys.authenticate(db=db, key=key, now=datetime.now(UTC) + timedelta(hours=2))
    for bad in (key[:-1] + "!", "csk_" + "0" * 12 + "_" + "A" * 43, "nonsense", ""):
        with pytest.raises(apikeys.KeyRefused, match="unknown"):
            apikeys.authenticate(db=db, key=bad)
    apikeys.revoke_key(db=db, ctx=CTX, key_id=row.id)
    with pytest.raises(apikeys.KeyRefused, match="revoked"):
        apikeys.authenticate(db=db, key=key)
    with pytest.raises(apikeys.ApiKeyNotFound):
        apikeys.revoke_key(db=db, ctx=CTX, key_id=10**9)


def test_keys_only_for_service_accounts_with_a_scope(db: Session) -> None:
    with pytest.raises(apikeys.ApiKeyNotFound):
        apikeys.create_key(db=db, ctx=CTX, account="ghost", name="k", scopes=["read"])  # type: ignore[list-item]
    apikeys.create_service_account(db=db, ctx=CTX, name="robot", role=Role.viewer)
    with pytest.raises(apikeys.InvalidApiKeyRequest, match="scopes"):
        apikeys.create_key(db=db, ctx=CTX, account="robot", name="k", scopes=[])
    with pytest.raises(apikeys.InvalidApiKeyRequest, match="clinician or viewer"):
        apikeys.create_service_account(db=db, ctx=CTX, name="root2", role=Role.admin)
    rows, total = apikeys.list_service_accounts(db=db)
    assert total == 1 and rows[0].is_service and rows[0].password_hash == apikeys.NO_PASSWORD
    assert apikeys.team_names(db=db, users=rows)[rows[0].id] == ["general"]


def test_cli_commands(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", ADMIN_PASSWORD)
    runner = CliRunner()
    d = ["--data-dir", str(tmp_path)]
    r = runner.invoke(cli_app, ["service-accounts", "create", "pacs1", "--role", "clinician", *d])
    assert r.exit_code == 0, r.output
    assert runner.invoke(cli_app, ["service-accounts", "create", "pacs1", *d]).exit_code == 1
    r = runner.invoke(cli_app, ["service-accounts", "create", "x", *d])
    assert r.exit_code == 2  # name too short
    r = runner.invoke(cli_app, ["service-accounts", "create", "boss1", "--role", "admin", *d])
    assert r.exit_code == 2
    assert "pacs1" in runner.invoke(cli_app, ["service-accounts", "list", *d]).output

    r = runner.invoke(
        cli_app, ["api-keys", "create", "pacs1", "--name", "router", "--scope", "predict", *d]
    )
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert apikeys.KEY_PATTERN.match(key), r.stdout
    r = runner.invoke(cli_app, ["api-keys", "create", "pacs1", "--name", "x", "--scope", "all", *d])
    assert r.exit_code == 2
    r = runner.invoke(cli_app, ["api-keys", "create", "admin", "--name", "x", *d])
    assert r.exit_code == 1 and "service account" in r.output
    r = runner.invoke(
        cli_app, ["api-keys", "create", "pacs1", "--name", "x", "--expires-at", "yesterday", *d]
    )
    assert r.exit_code == 2

    listing = runner.invoke(cli_app, ["api-keys", "list", *d])
    assert listing.exit_code == 0
    assert key.split("_")[1] in listing.output and key.rsplit("_", 1)[1] not in listing.output
    assert runner.invoke(cli_app, ["api-keys", "revoke", "1", *d]).exit_code == 0
    assert runner.invoke(cli_app, ["api-keys", "revoke", "99", *d]).exit_code == 1
    active = runner.invoke(cli_app, ["api-keys", "list", "--active", *d])
    assert key.split("_")[1] not in active.output


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable on 127.0.0.1:5432")
def test_round_trip_on_postgresql(settings: Settings) -> None:
    with pg_database(settings) as pg:
        app = create_app(pg)
        try:
            with TestClient(app) as c:
                admin = login(c, "admin", ADMIN_PASSWORD)
                r = c.post(
                    "/api/v1/service-accounts",
                    headers=admin,
                    json={"name": "pacs-router", "role": "clinician"},
                )
                assert r.status_code == 201, r.text
                r = c.post(
                    "/api/v1/api-keys",
                    headers=admin,
                    json={"account": "pacs-router", "name": "k", "scopes": ["read"]},
                )
                assert r.status_code == 201, r.text
                created = r.json()
                h = {"X-API-Key": created["key"]}
                assert c.get("/api/v1/cases", headers=h).status_code == 200
                assert c.get("/api/v1/users", headers=h).status_code == 403
                with app.state.clearscan.sessions() as db:
                    row = db.scalars(select(ApiKey)).one()
                    assert row.last_used_at is not None
                    assert row.key_hash == apikeys.hash_key(created["key"])
                assert c.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).is_success
                assert c.get("/api/v1/cases", headers=h).status_code == 401
        finally:
            app.state.clearscan.engine.dispose()
