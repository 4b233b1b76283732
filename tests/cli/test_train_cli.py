"""`clearscan train`: a foreground training run on an imported dataset; the last stdout line is the
registered NAME:VERSION (or one JSON summary with --json); the version is inactive, so
`clearscan predict --model NAME` refuses it until `clearscan models activate`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from clearscan.cli.main import app
from clearscan.db import create_db_engine, make_session_factory
from clearscan.jobs.models import Job
from tests.conftest import ADMIN_PASSWORD, png_bytes

runner = CliRunner()
REF = re.compile(r"^[a-z0-9._-]+:\d+\.\d+\.\d+$")
SIZE = 28


def norm(text: str) -> str:
    return " ".join(text.split())


def blob_image(rng: np.random.Generator, bright: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(9, 19, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 5) ** 2))
    img = 0.5 + (0.4 if bright else -0.4) * blob + rng.normal(0, 0.05, (SIZE, SIZE))
    return np.clip(img, 0, 1)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", ADMIN_PASSWORD)
    return ["--data-dir", str(tmp_path / "data")]


@pytest.fixture
def dataset(tmp_path, data_dir) -> dict:
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for cls in ("bright", "dark"):
        (src / cls).mkdir(parents=True)
        for i in range(30):
            (src / cls / f"{i:03d}.png").write_bytes(png_bytes(blob_image(rng, cls == "bright")))
    r = runner.invoke(app, ["datasets", "import", str(src), "--name", "blobs", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def jobs_in(tmp_path) -> list[Job]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'data' / 'clearscan.db'}")
    try:
        with make_session_factory(engine)() as db:
            rows = db.scalars(select(Job).order_by(Job.created_at)).all()
            for r in rows:
                db.expunge(r)
            return list(rows)
    finally:
        engine.dispose()


def test_help():
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "--dataset" in r.output and "--json" in r.output


def test_train_then_activate_then_predict(tmp_path, data_dir, dataset):
    r = runner.invoke(app, ["train", "--dataset", "blobs", "--epochs", "1", *data_dir])
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert REF.match(last), r.stdout
    assert last == "blobs:1.0.0"
    assert "validation" in r.stderr and "AUC" in r.stderr  # the summary goes to stderr

    # the run is a job row like an API one, finished and attributed to the CLI user
    (job,) = jobs_in(tmp_path)
    assert job.kind == "train" and job.status == "succeeded"
    assert job.params == {"dataset": "blobs", "epochs": 1, "seed": 0}
    assert job.created_by.startswith("cli:") and job.result["model"] == "blobs:1.0.0"
    assert job.result["dataset"]["hash"] == dataset["content_hash"]

    # --json: one JSON object with the model and the validation metrics
    r = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            dataset["id"],  # by id as well as by name
            "--epochs",
            "1",
            "--seed",
            "3",
            "--model-name",
            "blobs-json",
            "--json",
            *data_dir,
        ],
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    out = json.loads(lines[0])
    assert out["model"] == "blobs-json:1.0.0" and REF.match(out["model"])
    assert {"accuracy", "auc", "balanced_accuracy", "n"} <= set(out["val_metrics"])
    assert out["dataset"] == {"name": "blobs", "hash": dataset["content_hash"]}
    assert out["run"] == jobs_in(tmp_path)[-1].id and out["recipe"]["seed"] == 3

    # refusals name the problem and run nothing
    r = runner.invoke(app, ["train", "--dataset", "no-such-set", "--epochs", "1", *data_dir])
    assert r.exit_code != 0 and "'no-such-set' not found" in norm(r.output)
    r = runner.invoke(app, ["train", "--dataset", "blobs", "--epochs", "0", *data_dir])
    assert r.exit_code != 0 and "epochs" in norm(r.output)
    r = runner.invoke(app, ["train", "--dataset", "blobs", "--recipe", "nope", *data_dir])
    assert r.exit_code != 0 and "'nope'" in norm(r.output)
    r = runner.invoke(app, ["train", "--dataset", "blobs", "--model-name", "Bad Name", *data_dir])
    assert r.exit_code != 0 and "model_name" in norm(r.output)
    assert len(jobs_in(tmp_path)) == 2

    # inactive: listed, but not serving
    listing = runner.invoke(app, ["models", "list", *data_dir])
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.stdout.splitlines() if " blobs " in line)
    assert "inactive" in row and "none" in row and "1.0.0" not in row  # no active version
    versions = runner.invoke(app, ["models", "versions", "blobs", *data_dir])
    assert versions.exit_code == 0 and "1.0.0" in versions.stdout
    assert "inactive" in versions.stdout

    img = tmp_path / "bright.png"
    img.write_bytes(png_bytes(blob_image(np.random.default_rng(5), True)))
    r = runner.invoke(app, ["predict", str(img), "--model", "blobs", "--no-explain", *data_dir])
    assert r.exit_code != 0 and "no active version" in norm(r.output)

    r = runner.invoke(app, ["models", "activate", "blobs", "1.0.0", *data_dir])
    assert r.exit_code == 0, r.output
    listing = runner.invoke(app, ["models", "list", *data_dir])
    row = next(line for line in listing.stdout.splitlines() if " blobs " in line)
    assert "1.0.0" in row and "inactive" not in row and "active" in row
    r = runner.invoke(app, ["predict", str(img), "--model", "blobs", "--json", *data_dir])
    assert r.exit_code == 0, r.output
    pred = json.loads(r.stdout.strip().splitlines()[-1])
    assert pred["model"] == {"name": "blobs", "version": "1.0.0"}
    assert pred["labels"] == ["bright", "dark"] and pred["top_label"] == "bright"
    # the other trained model is still inactive
    r = runner.invoke(app, ["predict", str(img), "--model", "blobs-json", *data_dir])
    assert r.exit_code != 0 and "no active version" in norm(r.output)


def test_train_a_table_prints_its_summary_and_version(tmp_path, data_dir):
    """A table run has no epochs: the summary names the recipe cross-validation chose."""
    rng = np.random.default_rng(1)
    lines = ["a,b,label"]
    for i in range(120):
        sick = i % 2 == 1
        lines.append(f"{rng.normal(1.5 if sick else 0, 1):.4f},{rng.normal():.4f},{int(sick)}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    r = runner.invoke(
        app,
        [
            "datasets",
            "import",
            str(tmp_path / "t.csv"),
            "--name",
            "tab",
            "--target",
            "label",
            *data_dir,
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["train", "--dataset", "tab", "--recipe", "logistic-regression", *data_dir]
    )
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stdout.strip().splitlines()[-1] == "tab:1.0.0"
    assert "validation" in r.stderr and "logistic-regression" in norm(r.stderr)
