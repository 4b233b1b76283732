"""The base install (`pip install clearscan`, what `make run` installs) has no PyTorch: the
server must start, serve predictions and its pages, and refuse image training with a clear
message, without importing torch. Run in a subprocess where importing torch fails, as it does
when the package is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, tempfile

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())

    from fastapi.testclient import TestClient
    from clearscan.app import create_app
    from clearscan.config import Settings
    from tests.conftest import ADMIN_PASSWORD, login, png_bytes
    from tests.web.test_dataset_pages import class_zip
    from tests.web.test_pages import web_login

    settings = Settings(
        data_dir=tempfile.mkdtemp(), admin_password=ADMIN_PASSWORD,
        secret_key="test-secret-key-that-is-long-enough-0123456789",
    )
    with TestClient(create_app(settings)) as c:
        h = login(c, "admin", ADMIN_PASSWORD)
        r = c.post("/api/v1/predict", headers=h,
                   files={"file": ("x.png", png_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert c.get("/readyz").status_code == 200
        r = c.post("/api/v1/datasets", headers=h, data={"name": "chest"},
                   files={"file": ("d.zip", class_zip(), "application/zip")})
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/training-runs", headers=h, json={"dataset": "chest"})
        assert r.status_code == 422, r.text
        assert "needs PyTorch" in r.json()["detail"], r.text
        assert web_login(c, "admin", ADMIN_PASSWORD).status_code == 303
        for page in ("/", "/training", "/datasets", "/datasets/chest", "/models",
                     "/models/pneumonia-cxr"):
            r = c.get(page)
            assert r.status_code == 200, (page, r.status_code, r.text[:300])
    assert "torch" not in sys.modules, "the server imported torch"
    print("BASE-INSTALL-OK")
    """
)


CLI_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path

    import numpy as np

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())

    from typer.testing import CliRunner
    from clearscan.cli.main import app

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    lines = ["a,b,c,label"]
    for i in range(160):
        sick = i % 2 == 1
        a, b, c = rng.normal(1.5 if sick else 0.0, 1.0), rng.normal(0, 1), rng.normal(0, 1)
        lines.append(f"{a:.4f},{b:.4f},{c:.4f},{'sick' if sick else 'well'}")
    (tmp / "table.csv").write_text("\\n".join(lines) + "\\n")
    data = ["--data-dir", str(tmp / "data")]
    runner = CliRunner()
    r = runner.invoke(app, ["datasets", "import", str(tmp / "table.csv"), "--name", "table",
                            "--target", "label", "--json", *data])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--dataset", "table", "--json", *data])
    assert r.exit_code == 0, (r.output, repr(r.exception))
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["model"] == "table:1.0.0", result
    assert result["val_metrics"]["n"] > 0, result
    r = runner.invoke(app, ["models", "list", *data])
    assert r.exit_code == 0 and "table" in r.output, r.output
    assert "torch" not in sys.modules, "training a table imported torch"
    print("BASE-INSTALL-TRAIN-OK")
    """
)


def test_cli_trains_a_table_without_pytorch():
    """`clearscan train` on an imported CSV table trains and publishes a version without torch."""
    env = {**os.environ, "CLEARSCAN_ADMIN_PASSWORD": "admin-password-123"}
    out = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    ok = out.returncode == 0 and "BASE-INSTALL-TRAIN-OK" in out.stdout
    assert ok, out.stdout[-3000:] + out.stderr[-3000:]


def test_server_runs_without_pytorch():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "BASE-INSTALL-OK" in out.stdout, out.stdout + out.stderr[-3000:]
