"""Scaling benchmark: predictions/s with 1, 2, 4 API processes, and jobs/s with 1, 2, 4 workers.

Needs PostgreSQL and Redis (defaults: 127.0.0.1:5432 as `postgres` with trust auth, and
redis://127.0.0.1:6379/11); a fresh database is created and dropped.

1. API: for each N, `clearscan serve --workers N` on PostgreSQL, then `--clients` closed-loop
   clients (threads, one keep-alive connection each) POST a 256 x 256 PNG to /api/v1/predict
   (explain off) for `--seconds`; predictions/s and p50/p95 latency. Rate limits are switched
   off for the run (they are per user and this is one user).
2. Workers: for each N, N `clearscan worker` processes (concurrency 1 each, models loaded) drain
   `--jobs` batch jobs of `--images` 256 x 256 images each (explain off), submitted through the
   API to a queue no worker takes until all are ready (then a broadcast `add_consumer` starts
   them together); jobs/s from the first claim to the last end.

The scaling figure is throughput(N) / (N x throughput(1)); the target is >= 0.8 up to the core
count. Load generator and server share the machine: on a machine with few cores the clients'
CPU time caps the API figure, so read it with the core count printed beside it.

    python benchmarks/bench_scale.py [--api 1,2,4] [--workers 1,2,4] [--seconds 15]

Prints a JSON summary and writes bench-results/scale.json."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from clearscan.config import Settings
from clearscan.jobs.celery_queue import make_celery

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password-123"
SECRET = "bench-secret-key-that-is-long-enough-0123456789"
QUEUE = "bench"  # the batches wait here until every worker is ready, then all start at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png(seed: int, size: int = 256) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    import psycopg

    name = f"clearscan_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    host = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    url = (
        f"postgresql+psycopg://{host.get('user', 'postgres')}@{host.get('host', '127.0.0.1')}:"
        f"{host.get('port', 5432)}/{name}"
    )
    try:
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Processes:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"proc-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "clearscan.cli.main", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def says(self, proc: subprocess.Popen[bytes], word: str) -> bool:
        """Whether the process's log holds `word` (Celery logs "ready." once consuming)."""
        i = self.procs.index(proc)
        return word in (self.log_dir / f"proc-{i}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.procs.clear()


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout} s")


def token(url: str) -> dict[str, str]:
    r = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}, timeout=30
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def load(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    body = png(0)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(
                    "/api/v1/predict",
                    files={"file": ("x.png", body, "image/png")},
                    data={"explain": "false"},
                )
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 20 else [float("nan")] * 19
    return {
        "predictions_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else float("nan"),
        "p95_ms": round(q[18] * 1000, 1),
        "errors": errors,
        "requests": len(latencies),
    }


def bench_api(env: dict[str, str], n: int, clients: int, seconds: float, tmp: Path) -> dict:
    procs = Processes(env, tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        procs.start("serve", "--port", str(port), "--workers", str(n))
        wait_ready(url)
        headers = token(url)
        load(url, headers, clients, min(3.0, seconds))  # warm every process
        return {"processes": n, "clients": clients, **load(url, headers, clients, seconds)}
    finally:
        procs.stop_all()


def batch_zip(images: int, seed: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(images):
            zf.writestr(f"b/{i:03d}.png", png(seed * 1000 + i))
    return buf.getvalue()


def bench_workers(env: dict[str, str], n: int, jobs: int, images: int, tmp: Path) -> dict:
    from sqlalchemy import create_engine, text

    procs = Processes(env, tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = create_engine(env["CLEARSCAN_DATABASE_URL"])
    try:
        procs.start("serve", "--port", str(port))
        wait_ready(url)
        headers = token(url)
        archives = [batch_zip(images, j) for j in range(jobs)]
        ids = []
        for body in archives:  # routed to the `bench` queue, which no worker takes yet
            r = httpx.post(
                f"{url}/api/v1/batches",
                headers=headers,
                files={"file": ("b.zip", body, "application/zip")},
                data={"explain": "false"},
                timeout=120,
            )
            r.raise_for_status()
            ids.append(r.json()["id"])
        procs.env = {**env, "CLEARSCAN_LOG_LEVEL": "INFO"}  # workers log "ready." at INFO
        workers = [
            procs.start("worker", "--concurrency", "1", "--metrics-port", "0") for _ in range(n)
        ]
        ready_by = time.monotonic() + 180
        while not all(procs.says(w, "ready") for w in workers):  # models loaded, consuming
            if time.monotonic() > ready_by:
                raise SystemExit("workers not ready after 180 s")
            time.sleep(0.3)
        control = make_celery(Settings(broker_url=env["CLEARSCAN_BROKER_URL"]))
        took: set[str] = set()
        asked_by = time.monotonic() + 60
        while len(took) < n:  # idempotent: a worker already consuming the queue says so
            for reply in control.control.add_consumer(QUEUE, reply=True, timeout=2):
                took.update(reply)
            if time.monotonic() > asked_by:
                raise SystemExit(f"{len(took)} of {n} workers took the {QUEUE} queue: {took}")
        deadline = time.monotonic() + 1800
        while True:
            with engine.connect() as c:
                left = c.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE id = ANY(:ids) "
                        "AND status IN ('queued', 'running')"
                    ),
                    {"ids": ids},
                ).scalar_one()
            if left == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit("jobs did not finish in 30 minutes")
            time.sleep(0.2)
        with engine.connect() as c:
            row = c.execute(
                text(
                    "SELECT min(started_at), max(finished_at), count(*) FILTER (WHERE status = "
                    "'succeeded') FROM jobs WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            ).one()
        span = (row[1] - row[0]).total_seconds()
        return {
            "workers": n,
            "jobs": jobs,
            "images_per_job": images,
            "succeeded": int(row[2]),
            "seconds": round(span, 2),
            "jobs_per_s": round(jobs / span, 3),
        }
    finally:
        procs.stop_all()
        engine.dispose()


def scaling(rows: list[dict], key: str, by: str) -> None:
    base = next((r[key] for r in rows if r[by] == 1), None)
    for r in rows:
        r["scaling"] = round(r[key] / (r[by] * base), 3) if base else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", default="1,2,4", help="API process counts")
    ap.add_argument("--workers", default="1,2,4", help="worker counts")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--images", type=int, default=16, help="images per batch job")
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/11")
    args = ap.parse_args()
    api_counts = [int(x) for x in args.api.split(",") if x]
    worker_counts = [int(x) for x in args.workers.split(",") if x]

    import redis

    results: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "machine": os.uname().machine,
        "api": [],
        "workers": [],
    }
    with tempfile.TemporaryDirectory(prefix="clearscan-scale-") as tmp_s:
        tmp = Path(tmp_s)
        for phase, counts in (("api", api_counts), ("workers", worker_counts)):
            for n in counts:
                with database(args.pg) as url:
                    redis.Redis.from_url(args.broker).flushdb()
                    data = tmp / f"{phase}-{n}"
                    env = {
                        **os.environ,
                        "CLEARSCAN_DATA_DIR": str(data),
                        "CLEARSCAN_DATABASE_URL": url,
                        "CLEARSCAN_ADMIN_PASSWORD": PASSWORD,
                        "CLEARSCAN_SECRET_KEY": SECRET,
                        "CLEARSCAN_RATE_LIMIT_PREDICT_PER_USER": "0",
                        "CLEARSCAN_RATE_LIMIT_PREDICT_PER_ADDRESS": "0",
                        "CLEARSCAN_LOG_LEVEL": "WARNING",
                    }
                    if phase == "api":
                        row = bench_api(env, n, args.clients, args.seconds, tmp)
                    else:
                        env["CLEARSCAN_BROKER_URL"] = args.broker
                        env["CLEARSCAN_JOB_ROUTES"] = json.dumps({"batch": QUEUE})
                        row = bench_workers(env, n, args.jobs, args.images, tmp)
                    results[phase].append(row)  # type: ignore[attr-defined]
                    print(json.dumps({phase: row}), flush=True)
        redis.Redis.from_url(args.broker).flushdb()
    scaling(results["api"], "predictions_per_s", "processes")  # type: ignore[arg-type]
    scaling(results["workers"], "jobs_per_s", "workers")  # type: ignore[arg-type]
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
