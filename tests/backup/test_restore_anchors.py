"""A restore with the anchor file kept outside the data dir: the anchors written after the backup
name events the restored chain lacks, and the audit check says so (the trail that was lost was
longer). The documented way on (docs/operations.md): move the file aside, start a new one with
`clearscan audit anchor --start` (recorded in the trail); then the chain verifies again."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from clearscan.app import create_app
from clearscan.audit import service as audit
from clearscan.backup import service
from clearscan.backup.target import LocalLocation
from clearscan.cli.main import app as cli
from tests.backup.conftest import snapshot_state, sources, target
from tests.conftest import ADMIN_PASSWORD, login


def test_anchors_newer_than_the_backup_are_reported_until_a_new_file_is_started(
    settings, model_cache, tmp_path: Path, monkeypatch
):
    outside = settings.model_copy(update={"audit_anchor_file": tmp_path / "anchors.log"})
    location = LocalLocation(tmp_path / "backups")
    app = create_app(outside, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        login(client, "admin", ADMIN_PASSWORD)
        made = service.create(sources(outside), location)
        before = snapshot_state(outside)
        for _ in range(3):  # activity after the backup, anchored
            login(client, "admin", ADMIN_PASSWORD)
        with app.state.clearscan.sessions() as db:
            lost = audit.anchor_now(db=db, ctx=audit.RequestContext(actor="test")).seq

    shutil.rmtree(outside.data_dir)
    restored = outside.model_copy(update={"audit_key": before.audit_key})
    service.restore(location, made.name, target(restored))
    app = create_app(restored, initialised=True, model_cache=model_cache)
    with app.state.clearscan.sessions() as db:
        report = audit.verify_chain(db=db)
    assert not report.ok and f"names event {lost}" in (report.reason or "")

    (tmp_path / "anchors.log").rename(tmp_path / "anchors.before-restore.log")
    for key, value in {
        "CLEARSCAN_DATA_DIR": str(restored.data_dir),
        "CLEARSCAN_AUDIT_ANCHOR_FILE": str(tmp_path / "anchors.log"),
        "CLEARSCAN_AUDIT_KEY": before.audit_key,
    }.items():
        monkeypatch.setenv(key, value)
    r = CliRunner().invoke(cli, ["audit", "anchor", "--start"])
    assert r.exit_code == 0, r.output
    with app.state.clearscan.sessions() as db:
        assert audit.verify_chain(db=db).ok
