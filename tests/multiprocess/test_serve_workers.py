"""`clearscan serve --workers N`: N processes behind one port on PostgreSQL. Prometheus
counters add up across them (and across processes that have exited); what is computed at
scrape time is reported once; SIGHUP replaces the processes one by one under a stream of
predictions without a failed request; SIGTERM lets a request in flight finish. SQLite refuses
more than one process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from clearscan.cli.main import app as cli
from clearscan.config import Settings
from tests.conftest import ADMIN_PASSWORD, png_bytes
from tests.multiprocess.conftest import (
    Server,
    ServerFactory,
    children,
    free_port,
    server_env,
    until,
)

IMAGE = png_bytes()


def _serve(
    start_server: ServerFactory, settings: Settings, workers: int, **env: str
) -> tuple[Server, int]:
    port = free_port()
    args = ["-m", "clearscan.cli.main", "serve", "--port", str(port), "--workers", str(workers)]
    server = start_server(args, server_env(settings, **env), port, f"serve{workers}")
    server.wait_ready()
    return server, port


def _samples(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _per_process(folder: Path, route: str) -> dict[int, float]:
    """Requests to `route` counted by each process, read from its own counter file."""
    out = {}
    for f in folder.glob("counter_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(f)]):
            for s in metric.samples:
                if s.name == "clearscan_http_requests_total" and s.labels.get("route") == route:
                    total += s.value
        out[int(f.stem.split("_")[1])] = total
    return out


def _token(c: httpx.Client) -> dict[str, str]:
    r = c.post("/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_sqlite_refuses_more_than_one_process(tmp_path):
    result = CliRunner().invoke(
        cli, ["serve", "--workers", "2", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "--workers 2 needs PostgreSQL" in " ".join(result.output.split())
    assert not (tmp_path / "clearscan.db").exists()  # refused before touching anything


def test_metrics_add_up_across_processes_and_restarts(
    pg_settings: Settings, start_server: ServerFactory, tmp_path: Path
):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left over from an earlier run")
    server, _ = _serve(start_server, pg_settings, 2, PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert not (folder / "counter_999999.db").exists()  # emptied at start
    workers = children(server.proc.pid)
    assert len(workers) == 2, server.log_tail()

    # enough concurrent requests, each on its own connection, that both processes answer some
    sent = 0
    with httpx.Client(
        base_url=server.base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    ) as c:

        def burst() -> None:
            nonlocal sent
            threads = [threading.Thread(target=lambda: c.get("/healthz")) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            sent += 40

        until(
            lambda: (
                burst() or len([v for v in _per_process(folder, "/healthz").values() if v]) == 2
            ),
            timeout=60,
            what="both processes answering requests",
            step=0,
        )
        text = c.get("/metrics").text
    per_process = _per_process(folder, "/healthz")
    samples = _samples(text)
    counts = Counter((name, labels) for name, labels, _ in samples)
    assert [k for k, n in counts.items() if n > 1] == []  # nothing reported twice
    values = {(name, labels): v for name, labels, v in samples}
    healthz = (
        "clearscan_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    assert values[healthz] == sent == sum(per_process.values())  # the sum, not one process's
    assert sorted(per_process) == sorted(workers) and all(per_process.values())
    # computed at scrape time, by the answering process alone: one sample each, no pid label
    assert values[("clearscan_storage_writable", ())] == 1
    assert values[("clearscan_audit_chain_ok", ())] == 1
    assert values[("clearscan_jobs", (("kind", "train"), ("status", "queued")))] == 0
    assert (
        values[("clearscan_model_available", (("model", "pneumonia-cxr"), ("version", "1.0.0")))]
        == 1
    )
    assert not any(dict(labels).get("pid") for _, labels, _ in samples)

    # a rolling restart (SIGHUP) under a stream of predictions: no request fails
    ok: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(
            base_url=server.base, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
        ) as c:
            headers = _token(c)
            while not stop.is_set():
                try:
                    r = c.post(
                        "/api/v1/predict",
                        headers=headers,
                        data={"explain": "false"},
                        files=[("file", ("x.png", IMAGE, "image/png"))],
                    )
                    if r.status_code == 200:
                        ok.append(time.monotonic())
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    clients = [threading.Thread(target=stream) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        until(lambda: len(ok) >= 10, timeout=60, what="predictions before the restart")
        os.kill(server.proc.pid, signal.SIGHUP)
        replaced_at = until(
            lambda: (
                (now := children(server.proc.pid)).isdisjoint(workers) and len(now) == 2 and now
            ),
            timeout=180,
            what="both processes replaced",
            step=0.1,
        )
        restarted = time.monotonic()
        until(lambda: sum(t > restarted for t in ok) >= 10, timeout=60, what="predictions after")
    finally:
        stop.set()
        for t in clients:
            t.join(90)
    assert failures == []
    assert replaced_at and server.proc.poll() is None
    print(f"{len(ok)} predictions, none failed, across a rolling restart of 2 processes")

    # the processes that exited still count: the predictions made add up exactly
    with httpx.Client(base_url=server.base, timeout=30) as c:
        samples = _samples(c.get("/metrics").text)
    made = sum(v for name, _, v in samples if name == "clearscan_predictions_total")
    assert made == len(ok)
    # the verdict of a live process, once (the exited processes' gauges are gone), and whole:
    # processes that started and checked the chain while others appended saw no break
    verdicts = [v for name, _, v in samples if name == "clearscan_audit_chain_ok"]
    assert verdicts == [1]


def test_sigterm_lets_a_request_in_flight_finish(settings: Settings, start_server: ServerFactory):
    """One process (SQLite): SIGTERM while a request's body is still arriving; the server stops
    accepting, finishes that request (200), then exits cleanly."""
    server, _ = _serve(start_server, settings, 1, CLEARSCAN_SHUTDOWN_GRACE_SECONDS="30")
    with httpx.Client(base_url=server.base, timeout=30) as c:
        headers = _token(c)
    request = httpx.Request(
        "POST",
        f"{server.base}/api/v1/predict",
        headers=headers,
        data={"explain": "false"},
        files=[("file", ("x.png", IMAGE, "image/png"))],
    )
    body = request.read()
    release = threading.Event()

    def slow_body():  # type: ignore[no-untyped-def]
        yield body[:100]
        release.wait(30)
        yield body[100:]

    result: dict[str, object] = {}

    def send() -> None:
        with httpx.Client(timeout=60) as c:
            try:
                r = c.post(
                    request.url,
                    headers={**request.headers, "content-length": str(len(body))},
                    content=slow_body(),
                )
                result["status"] = r.status_code
                result["version"] = r.json()["predictions"][0]["model"]["version"]
            except Exception as exc:
                result["error"] = repr(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(1.0)  # the request has started: headers and the first bytes are in
        os.kill(server.proc.pid, signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None  # still running: waiting for the request
        with pytest.raises(httpx.ConnectError):  # but no longer accepting
            httpx.get(f"{server.base}/healthz", timeout=5)
    finally:
        release.set()
        sender.join(60)
    assert result == {"status": 200, "version": "1.0.0"}
    # a clean stop; uvicorn ends by re-raising the signal it handled, as its exit status
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log_tail(20000)
