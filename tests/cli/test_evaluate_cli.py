"""`clearscan evaluate`: a foreground evaluation of one model version (or two side by side) on a
dataset split: a metrics table with intervals and the confusion matrix, or JSON (`--json`), the
HTML report written to a folder (`--report`), a job row like an API one; refusals exit non-zero
naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from clearscan.cli.main import app
from clearscan.db import create_db_engine, make_session_factory
from clearscan.jobs.models import Job
from tests.cli.test_train_cli import blob_image
from tests.conftest import ADMIN_PASSWORD, png_bytes

runner = CliRunner()


def norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", ADMIN_PASSWORD)
    return ["--data-dir", str(tmp_path / "data")]


@pytest.fixture
def trained(tmp_path, data_dir) -> dict:
    """A dataset with train / val / test folders and two trained (inactive) versions."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for split, n in (("train", 20), ("val", 8), ("test", 10)):
        for cls in ("bright", "dark"):
            (src / split / cls).mkdir(parents=True)
            for i in range(n):
                img = blob_image(rng, cls == "bright")
                (src / split / cls / f"{i:03d}.png").write_bytes(png_bytes(img))
    r = runner.invoke(app, ["datasets", "import", str(src), "--name", "blobs", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    ds = json.loads(r.stdout)
    assert ds["counts"]["test"] == {"bright": 10, "dark": 10}
    refs = []
    for seed in (0, 1):
        r = runner.invoke(
            app, ["train", "--dataset", "blobs", "--epochs", "1", "--seed", str(seed), *data_dir]
        )
        assert r.exit_code == 0, r.output
        refs.append(r.stdout.strip().splitlines()[-1])
    assert refs == ["blobs:1.0.0", "blobs:1.1.0"]
    return {"dataset": ds, "refs": refs}


def eval_jobs(tmp_path) -> list[Job]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'data' / 'clearscan.db'}")
    try:
        with make_session_factory(engine)() as db:
            rows = db.scalars(
                select(Job).where(Job.kind == "evaluate").order_by(Job.created_at)
            ).all()
            for row in rows:
                db.expunge(row)
            return list(rows)
    finally:
        engine.dispose()


def test_help():
    r = runner.invoke(app, ["evaluate", "--help"])
    assert r.exit_code == 0, r.output
    for opt in ("--dataset", "--split", "--report", "--json"):
        assert opt in r.output


def test_table_json_report_and_compare(tmp_path, data_dir, trained):
    a_ref, b_ref = trained["refs"]
    ds = trained["dataset"]

    # the table: every metric with its interval, ECE and the confusion matrix
    r = runner.invoke(app, ["evaluate", a_ref, "--dataset", "blobs", *data_dir])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for word in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "ECE"):
        assert word in out, (word, out)
    assert "n = 20" in out and ds["content_hash"][:12] in out
    assert "confusion (rows true)" in out and "bright" in out and "dark" in out
    (job,) = eval_jobs(tmp_path)
    assert job.status == "succeeded" and job.created_by.startswith("cli:")
    assert job.params == {"model": a_ref, "dataset": "blobs", "split": "test"}
    res = job.result
    # the matrix rows as printed: label then counts
    for label, row in zip(res["confusion"]["labels"], res["confusion"]["matrix"], strict=True):
        assert norm(f"{label} │ {' │ '.join(str(v) for v in row)}") in norm(out), out
    assert f"{res['metrics']['accuracy']:.4f}" in out

    # --json: one object with intervals, the same numbers as the job row
    r = runner.invoke(app, ["evaluate", a_ref, "--dataset", "blobs", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["model"] == {"name": "blobs", "version": "1.0.0"}
    assert got["n"] == 20 and got["split"] == "test"
    assert set(got["ci95"]) == set(got["metrics"])
    for k, v in got["metrics"].items():
        lo, hi = got["ci95"][k]
        assert lo <= v <= hi, k
    assert got["metrics"] == res["metrics"] and got["confusion"] == res["confusion"]
    assert got["id"] == eval_jobs(tmp_path)[-1].id

    # two versions: a comparison with differences b - a
    r = runner.invoke(app, ["evaluate", a_ref, b_ref, "--dataset", "blobs", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    cmp = json.loads(r.stdout)
    assert cmp["a"]["model"]["version"] == "1.0.0" and cmp["b"]["model"]["version"] == "1.1.0"
    assert set(cmp["difference"]) == set(cmp["a"]["metrics"])
    for k, d in cmp["difference"].items():
        assert d == pytest.approx(cmp["b"]["metrics"][k] - cmp["a"]["metrics"][k], abs=1e-5)
    assert cmp["n"] == 20 and cmp["dataset"]["hash"] == ds["content_hash"]
    # and as a table: one column per version
    r = runner.invoke(app, ["evaluate", a_ref, b_ref, "--dataset", "blobs", *data_dir])
    assert r.exit_code == 0, r.output
    assert a_ref in r.stdout and b_ref in r.stdout
    assert r.stdout.count("confusion (rows true)") == 2

    # --report DIR: the HTML report of each evaluation, on another split
    report = tmp_path / "reports"
    r = runner.invoke(
        app,
        [
            "evaluate",
            a_ref,
            "--dataset",
            ds["id"],
            "--split",
            "val",
            "--report",
            str(report),
            *data_dir,
        ],
    )
    assert r.exit_code == 0, r.output
    (html,) = list(report.glob("*.html"))
    text = html.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text and a_ref in text
    assert "<strong>val</strong>" in text
    assert "report:" in r.stderr and html.name in r.stderr.replace("\n", "")
    assert len(eval_jobs(tmp_path)) == 7  # 1 + 1 + 2 + 2 + 1: each evaluation is a job
    assert all(j.status == "succeeded" for j in eval_jobs(tmp_path))


REFUSALS = [
    (["nope", "--dataset", "blobs"], ["'nope'", "not found"]),
    (["blobs:9.9.9", "--dataset", "blobs"], ["9.9.9", "not found"]),
    (["blobs", "--dataset", "blobs"], ["no active version"]),
    (["blobs:1.0.0", "--dataset", "no-such-set"], ["'no-such-set'", "not found"]),
    (["blobs:1.0.0", "--dataset", "blobs", "--split", "holdout"], ["'holdout'"]),
    (["blobs:1.0.0", "blobs:1.1.0", "blobs:1.0.0", "--dataset", "blobs"], ["two"]),
]


def test_refusals_exit_non_zero_with_a_message(tmp_path, data_dir, trained):
    for args, words in REFUSALS:
        r = runner.invoke(app, ["evaluate", *args, *data_dir])
        assert r.exit_code != 0, (args, r.output)
        text = norm(r.output)
        for w in words:
            assert w in text, (args, w, text)
        assert "Traceback" not in r.output
    assert eval_jobs(tmp_path) == []  # nothing queued
    # an unknown second model is refused too (after the first one ran)
    r = runner.invoke(app, ["evaluate", "blobs:1.0.0", "nope", "--dataset", "blobs", *data_dir])
    assert r.exit_code != 0 and "'nope'" in norm(r.output), r.output


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def test_json_output_of_a_split_without_one_class_is_valid_json(tmp_path, data_dir, trained):
    rng = np.random.default_rng(5)
    src = tmp_path / "onecls"
    for split, classes in (("train", ("bright", "dark")), ("val", ("bright", "dark"))):
        for cls in classes:
            (src / split / cls).mkdir(parents=True)
            for i in range(4):
                img = blob_image(rng, cls == "bright")
                (src / split / cls / f"{i}.png").write_bytes(png_bytes(img))
    (src / "test" / "bright").mkdir(parents=True)
    for i in range(6):
        (src / "test" / "bright" / f"{i}.png").write_bytes(png_bytes(blob_image(rng, True)))
    r = runner.invoke(app, ["datasets", "import", str(src), "--name", "onecls", *data_dir])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "blobs:1.0.0", "--dataset", "onecls", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout, parse_constant=_no_constants)
    assert out["n"] == 6
