"""The base install (`pip install clearscan`, what `make run` installs) has no PyTorch: the
server must start, serve predictions and its pages, and refuse image training with a clear
message, without importing torch. Run in a subprocess where importing torch fails, as it does
when the package is absent."""

from __future__ import annotations

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


def test_server_runs_without_pytorch():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "BASE-INSTALL-OK" in out.stdout, out.stdout + out.stderr[-3000:]
