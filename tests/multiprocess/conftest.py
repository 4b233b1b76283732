"""Real server processes for the multi-process tests: a fresh PostgreSQL database and data dir,
servers started in their own process group (killed, group and all, when a test ends), and
bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, pg_available, pg_database

SECRET = "multiprocess-test-secret-key-0123456789abcdef"
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server started by a test: its process (the group leader), address and log."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    _log_file: object = field(repr=False, default=None)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base, timeout=5) as c:
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.proc.poll() is not None:
                    pytest.fail(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the server was not ready in {timeout} s:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole group, then SIGKILL if it has not ended in `timeout`."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


ServerFactory = Callable[..., Server]


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a server process: these settings, nothing inherited that could
    change them (CLEARSCAN_*, a Prometheus folder)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CLEARSCAN_") and k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env.update(
        {
            "CLEARSCAN_DATA_DIR": str(settings.data_dir),
            "CLEARSCAN_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CLEARSCAN_SECRET_KEY": SECRET,
            "CLEARSCAN_LOG_LEVEL": "WARNING",
            "CLEARSCAN_PARALLEL_RUNS": "1",  # light on a small test machine
        }
    )
    if settings.database_url:
        env["CLEARSCAN_DATABASE_URL"] = settings.database_url
    env.update(extra)
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """start_server(args, env, port) -> Server; every server is stopped after the test."""
    started: list[Server] = []

    def start(args: list[str], env: dict[str, str], port: int, name: str = "server") -> Server:
        log = tmp_path / f"{name}-{port}.log"
        out = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers die with it
        )
        server = Server(proc, f"http://127.0.0.1:{port}", log, out)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(timeout=15)
            server._log_file.close()  # type: ignore[attr-defined]


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh PostgreSQL database and data dir, initialised once (schema, admin),
    as `clearscan serve` does before it starts its processes."""
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    from clearscan.bootstrap import initialise

    base = Settings(data_dir=tmp_path / "data", admin_password=ADMIN_PASSWORD, secret_key=SECRET)
    with pg_database(base) as pg:
        initialise(pg)
        yield pg


def children(pid: int) -> set[int]:
    """The server processes a uvicorn supervisor runs (its spawned children, not the
    multiprocessing resource tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in cmd and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def until(check: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> object:
    """Poll `check` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(step)
