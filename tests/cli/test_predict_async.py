"""`clearscan predict --server URL --async FILE...` against a live server: the files go up as one
batch (token or user sign-in), the command prints the batch id and where to follow it, and the
server's worker makes one case per file; refusals and wrong option combinations."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from clearscan.app import create_app
from clearscan.cli.main import app as cli
from tests.conftest import ADMIN_PASSWORD, chest_like, dicom_bytes, png_bytes

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(settings, model_cache) -> Iterator[str]:
    """A live server (with its job worker) on a free port."""
    port = _free_port()
    live = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, model_cache=model_cache),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not live.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    live.should_exit = True
    thread.join(30)


def token(base: str) -> str:
    r = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def wait(base: str, bearer: str, batch_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        r = httpx.get(
            f"{base}/api/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert r.status_code == 200, r.text
        if r.json()["status"] not in ("queued", "running"):
            return dict(r.json())
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture
def files(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes(chest_like(128, 1)))
    b = tmp_path / "b.dcm"
    b.write_bytes(dicom_bytes(chest_like(128, 2)))
    other = tmp_path / "sub"
    other.mkdir()
    (other / "a.png").write_bytes(png_bytes(chest_like(128, 3)))  # the same name again
    return [a, b, other / "a.png"]


def test_async_upload_prints_the_batch_and_the_server_makes_the_cases(server, files):
    bearer = token(server)
    r = runner.invoke(
        cli, ["predict", *map(str, files), "--server", server + "/", "--async", "--token", bearer]
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    batch_id = lines[0].split()[1]
    assert lines[0] == f"batch {batch_id} queued: 3 images"
    assert lines[1] == f"follow it at {server}/batches/{batch_id}"
    assert lines[2] == f"or GET {server}/api/v1/batches/{batch_id}"
    batch = wait(server, bearer, batch_id)
    assert batch["status"] == "succeeded", batch["error"]
    assert [it["name"] for it in batch["items"]] == ["a.png", "b.dcm", "0003-a.png"]
    assert all(it["case_id"] for it in batch["items"])
    assert batch["model"] == "pneumonia-cxr" and batch["explain"] is True


def test_async_json_with_a_user_and_model(server, files, monkeypatch):
    monkeypatch.setenv("CLEARSCAN_PASSWORD", ADMIN_PASSWORD)
    r = runner.invoke(
        cli,
        [
            "predict",
            str(files[0]),
            "--server",
            server,
            "--async",
            "--user",
            "admin",
            "--model",
            "pneumonia-cxr:1.0.0",
            "--no-explain",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["images"] == 1 and out["model"] == "pneumonia-cxr:1.0.0"
    assert out["url"] == f"{server}/batches/{out['batch_id']}"
    assert out["api_url"] == f"{server}/api/v1/batches/{out['batch_id']}"
    batch = wait(server, token(server), out["batch_id"])
    assert batch["status"] == "succeeded" and batch["explain"] is False


def test_refusals_are_reported_and_nothing_is_queued(server, files, tmp_path):
    bearer = token(server)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    r = runner.invoke(
        cli, ["predict", str(files[0]), str(text), "--server", server, "--async", "--token", bearer]
    )
    assert r.exit_code == 1
    assert "refused the request (415)" in r.output and "entry 2 of the archive" in r.output
    r = runner.invoke(
        cli, ["predict", str(files[0]), "--server", server, "--async", "--token", "x"]
    )
    assert r.exit_code == 1 and "(401)" in r.output
    r = runner.invoke(
        cli,
        [
            "predict",
            str(files[0]),
            "--server",
            server,
            "--async",
            "--token",
            bearer,
            "--model",
            "nope",
        ],
    )
    assert r.exit_code == 1 and "(404)" in r.output and "nope" in r.output
    listed = httpx.get(f"{server}/api/v1/batches", headers={"Authorization": f"Bearer {bearer}"})
    assert listed.json()["total"] == 0


def test_option_combinations(tmp_path, files):
    a = str(files[0])
    r = runner.invoke(cli, ["predict", a, "--server", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "--server and --async go together" in r.output
    r = runner.invoke(cli, ["predict", a, "--async"])
    assert r.exit_code == 2 and "--server and --async go together" in r.output
    r = runner.invoke(cli, ["predict", a, "--server", "ftp://host", "--async", "--token", "t"])
    assert r.exit_code == 2 and "give the server's URL" in r.output
    r = runner.invoke(cli, ["predict", a, "--server", "http://127.0.0.1:9", "--async"])
    assert r.exit_code == 2 and "--token" in r.output
    r = runner.invoke(
        cli, ["predict", a, "--server", "http://127.0.0.1:9", "--async", "--token", "t"]
    )
    assert r.exit_code == 1 and "cannot reach http://127.0.0.1:9" in r.output
    r = runner.invoke(
        cli,
        [
            "predict",
            str(tmp_path / "missing.png"),
            "--server",
            "http://127.0.0.1:9",
            "--async",
            "--token",
            "t",
        ],
    )
    assert r.exit_code == 1 and "cannot read file" in r.output
