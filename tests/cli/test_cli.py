"""The `clearscan` command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clearscan.cli.main import app
from tests.conftest import chest_like, dicom_bytes, png_bytes

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["serve"],
        ["predict"],
        ["users"],
        ["users", "create"],
        ["users", "list"],
        ["users", "set-role"],
        ["users", "disable"],
        ["users", "set-password"],
        ["db"],
        ["db", "upgrade"],
    ],
)
def test_help_everywhere(args):
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_predict_json_and_out(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes(chest_like(128, 1)))
    b = tmp_path / "b.dcm"
    b.write_bytes(dicom_bytes())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "predict",
            str(a),
            str(b),
            str(bad),
            "--json",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "d"),
        ],
    )
    assert r.exit_code == 1  # one file failed
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["file"] for x in lines] == [str(a), str(b), str(bad)]
    for x in lines[:2]:
        assert x["model"]["name"] == "pneumonia-cxr" and len(x["probabilities"]) == 2
        assert x["top_label"] in x["labels"] and x["heatmap_url"].startswith("file://")
    assert lines[2]["status"] == 415 and "error" in lines[2]
    assert len(list(out.glob("*.heatmap.png"))) == 2 and len(list(out.glob("*.json"))) == 2


def test_predict_no_explain_human_output(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes())
    r = runner.invoke(app, ["predict", str(a), "--no-explain", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 0 and "pneumonia-cxr:1.0.0" in r.stdout


def test_predict_unknown_model(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes())
    r = runner.invoke(app, ["predict", str(a), "--model", "nope", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "not found" in r.output


def test_users_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    d = ["--data-dir", str(tmp_path)]
    r = runner.invoke(
        app,
        ["users", "create", "nurse1", "--role", "clinician", "--password", "a-good-password", *d],
    )
    assert r.exit_code == 0, r.output
    assert (
        runner.invoke(
            app, ["users", "create", "nurse1", "--password", "a-good-password", *d]
        ).exit_code
        == 1
    )
    assert (
        runner.invoke(app, ["users", "create", "x", "--password", "a-good-password", *d]).exit_code
        == 2
    )
    assert runner.invoke(app, ["users", "set-role", "nurse1", "viewer", *d]).exit_code == 0
    assert runner.invoke(app, ["users", "disable", "nurse1", *d]).exit_code == 0
    assert runner.invoke(app, ["users", "disable", "ghost", *d]).exit_code == 1
    listing = runner.invoke(app, ["users", "list", *d])
    assert "nurse1" in listing.stdout and "viewer" in listing.stdout and "yes" in listing.stdout
    assert runner.invoke(app, ["users", "set-role", "admin", "viewer", *d]).exit_code == 1


def test_db_upgrade(tmp_path):
    r = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0
    import sqlite3

    con = sqlite3.connect(tmp_path / "clearscan.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "cases", "images", "predictions", "reviews", "audit_events"} <= tables


def test_models_commands(tmp_path, monkeypatch):
    import json
    import shutil

    from clearscan.registry.catalog import BUNDLED_DIR

    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    d = ["--data-dir", str(tmp_path / "data")]
    pkg = tmp_path / "pkg"
    shutil.copytree(BUNDLED_DIR / "pneumonia-cxr", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["version"] = "1.5.0"
    (pkg / "manifest.json").write_text(json.dumps(m))

    r = runner.invoke(app, ["models", "import", str(pkg), *d])
    assert r.exit_code == 0, r.output
    assert "pneumonia-cxr:1.5.0" in r.stdout
    assert runner.invoke(app, ["models", "import", str(pkg), *d]).exit_code == 1  # immutable
    listing = runner.invoke(app, ["models", "list", *d])
    assert "pneumonia" in listing.stdout and "1.0.0" in listing.stdout
    versions = runner.invoke(app, ["models", "versions", "pneumonia-cxr", *d])
    assert "1.5.0" in versions.stdout and "inactive" in versions.stdout
    assert runner.invoke(app, ["models", "activate", "pneumonia-cxr", "1.5.0", *d]).exit_code == 0
    show = runner.invoke(app, ["models", "show", "pneumonia-cxr", *d])
    assert "pneumonia-cxr:1.5.0" in show.stdout and "Not for clinical use" in show.stdout
    # the active version cannot be removed; a bundled one never
    assert runner.invoke(app, ["models", "remove", "pneumonia-cxr:1.5.0", *d]).exit_code == 1
    r = runner.invoke(app, ["models", "rollback", "pneumonia-cxr", *d])
    assert r.exit_code == 0 and "to 1.0.0" in r.stdout
    out = tmp_path / "export.zip"
    assert (
        runner.invoke(app, ["models", "export", "pneumonia-cxr:1.5.0", str(out), *d]).exit_code == 0
    )
    assert out.stat().st_size > 100_000
    assert runner.invoke(app, ["models", "remove", "pneumonia-cxr:1.0.0", *d]).exit_code == 1
    assert runner.invoke(app, ["models", "remove", "pneumonia-cxr:1.5.0", *d]).exit_code == 0
    assert runner.invoke(app, ["models", "activate", "pneumonia-cxr", "1.5.0", *d]).exit_code == 1
    pickle_file = tmp_path / "model.pkl"
    pickle_file.write_bytes(b"\x80\x04K\x01.")
    r = runner.invoke(app, ["models", "import", str(pickle_file), *d])
    assert r.exit_code == 1 and "pickle" in r.output


def test_db_upgrade_with_a_missing_driver_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_DATABASE_URL", "postgresql+psycopg2://u@db/cs")
    r = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2
    text = " ".join(r.output.split())  # the console wraps long lines
    assert "'postgresql+psycopg2' is not installed" in text and "clearscan[postgres]" in text
