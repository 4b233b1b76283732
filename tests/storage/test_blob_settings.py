"""CLEARSCAN_BLOB_URL: the store it selects, start-up refusals that name the problem, and the whole
app on S3 (moto on loopback): predictions stored in the bucket and read back through the API."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from clearscan.bootstrap import blob_store
from clearscan.config import ConfigError, Settings
from clearscan.storage import LocalBlobStore
from tests.conftest import ADMIN_PASSWORD, login, png_bytes

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-key-that-is-long-enough-0123456789"


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", admin_password=ADMIN_PASSWORD, secret_key=SECRET, **kw
    )


def _s3(tmp_path: Path, server, url: str) -> Settings:
    return _settings(
        tmp_path,
        blob_url=url,
        s3_endpoint_url=server.endpoint_url,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )


def test_default_and_file_urls_select_the_local_store(tmp_path):
    store = blob_store(_settings(tmp_path))
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "data" / "blobs"
    store = blob_store(_settings(tmp_path, blob_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://bucket/x", "'ftp://bucket/x' is not usable"),
        ("bucket/prefix", "'bucket/prefix' is not usable"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://a/x", "'a' is not a valid bucket name"),
        ("file://relative", "must name an absolute path"),
    ],
)
def test_a_wrong_blob_url_stops_start_up(tmp_path, url, message):
    from clearscan.app import create_app

    with pytest.raises(ConfigError, match="CLEARSCAN_BLOB_URL") as info:
        create_app(_settings(tmp_path, blob_url=url))
    assert message in str(info.value)


def test_a_missing_bucket_stops_start_up_naming_it(tmp_path, s3_server):
    from clearscan.app import create_app

    with pytest.raises(ConfigError, match="'no-such-bucket-7' does not exist"):
        create_app(_s3(tmp_path, s3_server, "s3://no-such-bucket-7/blobs"))


def test_an_unreachable_s3_endpoint_stops_start_up(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(
        tmp_path,
        blob_url="s3://clearscan-blobs",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    with pytest.raises(ConfigError, match="'clearscan-blobs' is unreachable"):
        blob_store(settings)


def test_serve_prints_the_refusal_without_a_traceback(tmp_path, s3_server, monkeypatch):
    from clearscan.cli.main import app

    monkeypatch.setenv("CLEARSCAN_BLOB_URL", "s3://no-such-bucket-9")
    monkeypatch.setenv("CLEARSCAN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CLEARSCAN_S3_REGION", "us-east-1")
    monkeypatch.setenv("CLEARSCAN_S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("CLEARSCAN_S3_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("CLEARSCAN_SECRET_KEY", SECRET)
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "no-such-bucket-9" in out and "Traceback" not in out


NO_BOTO = textwrap.dedent(
    """
    import sys, tempfile

    class NoBoto:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("boto3", "botocore", "s3transfer"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoBoto())

    from clearscan.app import create_app
    from clearscan.config import ConfigError, Settings

    def settings(**kw):
        return Settings(data_dir=tempfile.mkdtemp(), admin_password="admin-password-123",
                        secret_key="test-secret-key-that-is-long-enough-0123456789", **kw)

    create_app(settings())  # the local store needs no boto3
    try:
        create_app(settings(blob_url="s3://clearscan-blobs/x"))
    except ConfigError as exc:
        print("REFUSED:", exc)
    assert "boto3" not in sys.modules
    """
)


def test_s3_without_boto3_names_the_extra(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", NO_BOTO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "REFUSED:" in r.stdout, r.stdout
    assert "clearscan[s3]" in r.stdout and "`s3` extra" in r.stdout


def test_the_app_on_s3_stores_and_serves_predictions(tmp_path, s3_server, model_cache):
    from clearscan.app import create_app

    bucket = s3_server.new_bucket()
    settings = _s3(tmp_path, s3_server, f"s3://{bucket}/clearscan")
    png = png_bytes()
    with TestClient(create_app(settings, model_cache=model_cache)) as c:
        h = login(c, "admin", ADMIN_PASSWORD)
        r = c.post("/api/v1/predict", headers=h, files={"file": ("x.png", png, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        (p,) = body["predictions"]
        case = c.get(f"/api/v1/cases/{body['case_id']}", headers=h).json()
        image_id = case["images"][0]["id"]
        original = c.get(f"/api/v1/images/{image_id}/file", headers=h)
        assert original.status_code == 200 and original.content == png
        heat = c.get(p["heatmap_url"], headers=h)
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
        health = c.get("/api/v1/health", headers=h).json()
        assert health["storage"] == {"ok": True, "backend": "s3", "error": None}
        ready = c.get("/readyz").json()
        assert ready["storage"] and ready["storage_backend"] == "s3"

    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="clearscan/")
    keys = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert hashlib.sha256(png).hexdigest() in keys
    assert hashlib.sha256(heat.content).hexdigest() in keys
    assert not (settings.data_dir / "blobs").exists()
