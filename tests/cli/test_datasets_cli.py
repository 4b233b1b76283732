"""`clearscan datasets import | list | show`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from clearscan.cli.main import app
from tests.conftest import ADMIN_PASSWORD, png_bytes

runner = CliRunner()


def norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", ADMIN_PASSWORD)
    return ["--data-dir", str(tmp_path / "data")]


def class_folders(root, sizes: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    for cls, n in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i:03d}.png").write_bytes(png_bytes(rng.random((16, 16))))
    return root


@pytest.mark.parametrize("args", [["datasets"], ["datasets", "import"], ["datasets", "show"]])
def test_help(args):
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_import_list_show(tmp_path, data_dir):
    src = class_folders(tmp_path / "src", {"benign": 12, "malignant": 5})
    r = runner.invoke(
        app, ["datasets", "import", str(src), "--name", "lesions", "--json", *data_dir]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["name"] == "lesions" and out["kind"] == "images"
    assert out["classes"] == ["benign", "malignant"] and out["n_items"] == 17
    assert set(out["counts"]) == {"train", "val"}
    assert sum(out["counts"]["train"].values()) + sum(out["counts"]["val"].values()) == 17
    assert out["created_by"].startswith("cli:")
    assert any("'malignant'" in w for w in out["warnings"])

    # the human output: class balance and warnings
    r = runner.invoke(app, ["datasets", "import", str(src), "--name", "lesions-2", *data_dir])
    assert r.exit_code == 0, r.output
    assert "lesions-2" in r.stdout and "benign" in r.stdout and "warning" in r.stdout
    assert out["content_hash"] in r.stdout  # same source, same hash

    # immutable: the same name again is refused
    r = runner.invoke(app, ["datasets", "import", str(src), "--name", "lesions", *data_dir])
    assert r.exit_code == 1 and "exists" in norm(r.output)

    listing = runner.invoke(app, ["datasets", "list", *data_dir])
    assert listing.exit_code == 0
    assert "lesions" in listing.stdout and "lesions-2" in listing.stdout

    shown = runner.invoke(app, ["datasets", "show", "lesions", *data_dir])
    assert shown.exit_code == 0 and "lesions" in shown.stdout and "malignant" in shown.stdout
    shown = runner.invoke(app, ["datasets", "show", out["id"], "--json", *data_dir])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == "lesions"
    assert json.loads(shown.stdout)["counts"] == out["counts"]

    missing = runner.invoke(app, ["datasets", "show", "no-such-set", *data_dir])
    assert missing.exit_code != 0 and "not found" in norm(missing.output)


def test_import_errors(tmp_path, data_dir):
    csv = tmp_path / "table.csv"
    csv.write_text("x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    r = runner.invoke(app, ["datasets", "import", str(csv), "--name", "table", *data_dir])
    assert r.exit_code != 0 and "target column" in norm(r.output)
    r = runner.invoke(
        app, ["datasets", "import", str(csv), "--name", "table", "--target", "y", *data_dir]
    )
    assert r.exit_code != 0 and "'y'" in norm(r.output) and "x, label" in norm(r.output)

    one = class_folders(tmp_path / "one", {"only": 4})
    r = runner.invoke(app, ["datasets", "import", str(one), "--name", "one", *data_dir])
    assert r.exit_code != 0 and "one class" in norm(r.output)

    r = runner.invoke(
        app, ["datasets", "import", str(tmp_path / "nope"), "--name", "nope", *data_dir]
    )
    assert r.exit_code != 0 and "does not exist" in norm(r.output)

    listing = runner.invoke(app, ["datasets", "list", *data_dir])
    assert listing.exit_code == 0 and "table" not in listing.stdout and "one" not in listing.stdout

    # a good CSV with its target imports
    args = ["datasets", "import", str(csv), "--name", "table", "--target", "label", "--json"]
    r = runner.invoke(app, [*args, *data_dir])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["kind"] == "table" and out["n_items"] == 20 and out["classes"] == ["a", "b"]


def test_npz_labels_option(tmp_path, data_dir):
    rng = np.random.default_rng(3)
    path = tmp_path / "m.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        train_labels=(np.arange(20) % 2).reshape(20, 1),
    )
    r = runner.invoke(
        app,
        ["datasets", "import", str(path), "--name", "m", "--labels", "no,yes", "--json", *data_dir],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["source_format"] == "npz" and out["classes"] == ["no", "yes"]
