"""`clearscan teams` and the teams of `clearscan users`."""

from __future__ import annotations

from typer.testing import CliRunner

from clearscan.cli.main import app

runner = CliRunner()


def test_teams_and_user_teams_from_the_shell(tmp_path):
    d = ["--data-dir", str(tmp_path / "d")]
    r = runner.invoke(app, ["teams", "create", "icu", *d])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["teams", "create", "icu", *d]).exit_code == 1
    pw = ["--password", "correct-horse-battery"]
    r = runner.invoke(app, ["users", "create", "nurse", *pw, "--team", "icu", *d])
    assert r.exit_code == 0 and "teams icu" in r.output, r.output
    r = runner.invoke(app, ["users", "create", "doc", *pw, *d])
    assert r.exit_code == 0 and "teams general" in r.output, r.output
    r = runner.invoke(app, ["users", "create", "x-user", *pw, "--team", "nope", *d])
    assert r.exit_code == 1 and "nope" in r.output
    r = runner.invoke(app, ["users", "set-teams", "doc", "icu", "general", *d])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["users", "list", *d])
    assert "general, icu" in r.output
    r = runner.invoke(app, ["teams", "list", *d])
    assert r.exit_code == 0 and "icu" in r.output and "general" in r.output
