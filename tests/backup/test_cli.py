"""`clearscan backup ...` end to end, with the exit codes an operator sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from clearscan.backup import crypto
from clearscan.backup.files import blob_path
from clearscan.cli.main import app
from clearscan.config import Settings
from tests.backup.conftest import small_site

runner = CliRunner()


def said(r: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(r.output.split())


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("CLEARSCAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLEARSCAN_SECRET_KEY", "cli-secret-key-that-is-long-enough-0123456789")
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    monkeypatch.setenv("CLEARSCAN_BACKUP_TO", str(tmp_path / "backups"))
    settings = Settings()
    small_site(settings)
    return settings


def test_create_list_verify_restore(env: Settings, tmp_path: Path, monkeypatch):
    key = crypto.new_key()
    monkeypatch.setenv("CLEARSCAN_BACKUP_KEY", key)
    r = runner.invoke(app, ["backup", "create"])
    assert r.exit_code == 0, r.output
    assert "3 blobs" in said(r) and "encrypted" in said(r)
    listed = runner.invoke(app, ["backup", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["encrypted"] and row["database"] == "sqlite" and row["blobs"] == 3
    folder = tmp_path / "backups" / row["name"]

    r = runner.invoke(app, ["backup", "verify", str(folder)])
    assert r.exit_code == 0 and "is good" in said(r), r.output

    # the right key from a file, the wrong one from the environment
    key_file = tmp_path / "old.key"
    key_file.write_text(key)
    monkeypatch.setenv("CLEARSCAN_BACKUP_KEY", crypto.new_key())
    r = runner.invoke(app, ["backup", "verify", str(folder)])
    assert r.exit_code == 6 and "wrong key" in said(r)
    r = runner.invoke(app, ["backup", "verify", str(folder), "--key-file", str(key_file)])
    assert r.exit_code == 0, r.output

    r = runner.invoke(
        app, ["backup", "restore", "--from", str(folder), "--into", str(env.data_dir)]
    )
    assert r.exit_code == 4 and "not empty" in said(r)

    into = tmp_path / "restored"
    r = runner.invoke(
        app,
        [
            "backup",
            "restore",
            "--from",
            str(folder),
            "--into",
            str(into),
            "--key-file",
            str(key_file),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "restored" in said(r) and "audit chain" in said(r)
    assert (into / "clearscan.db").is_file() and (into / "audit_key").is_file()


def test_damaged_backup_exit_code(env: Settings, tmp_path: Path):
    r = runner.invoke(app, ["backup", "create", "--to", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0, r.output
    (folder,) = (tmp_path / "elsewhere").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    victim = manifest["blobs"][0]["sha256"]
    (folder / blob_path(victim)).write_bytes(b"rot")
    r = runner.invoke(app, ["backup", "verify", str(folder)])
    assert r.exit_code == 3 and victim in said(r)
    r = runner.invoke(app, ["backup", "verify", str(tmp_path / "nothing-here")])
    assert r.exit_code == 1 and "no backup at" in said(r)


def test_keygen():
    r = runner.invoke(app, ["backup", "keygen"])
    assert r.exit_code == 0
    assert len(crypto.parse_key(r.stdout.strip().splitlines()[0])) == 32
