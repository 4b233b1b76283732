"""Metrics in prometheus-client's multiprocess mode, with small processes instead of servers:
a killed process's counts still add up but its live gauges are dropped at the next scrape; a
process that stops cleanly drops them itself; scrape-time gauges never reach the files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clearscan.observability.metrics import MULTIPROC_ENV, _FilesCollector

CHILD = """
import os, sys, time
from clearscan.observability.metrics import Metrics
m = Metrics()
assert m.multiprocess_dir, "not in multiprocess mode"
m.requests.labels("GET", "/healthz", "200").inc(int(sys.argv[2]))
m.audit_verified(ok=sys.argv[3] == "ok", checked=int(sys.argv[2]))
m.models_available.labels("pneumonia-cxr", "1.0.0").set(1)  # scrape-time: no file
print("ready", flush=True)
how = sys.argv[1]
if how == "killed":
    os.kill(os.getpid(), 9)
elif how == "clean":
    m.close()
else:
    sys.stdin.read()  # alive until the test closes stdin
"""


def _child(folder: Path, how: str, count: int, verdict: str) -> subprocess.Popen[str]:
    env = {**os.environ, MULTIPROC_ENV: str(folder)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, how, str(count), verdict],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_dead_processes_count_but_their_gauges_go(tmp_path: Path):
    alive = _child(tmp_path, "alive", 11, "ok")
    try:
        # a later verdict than the live process's, from a process killed since
        killed = _child(tmp_path, "killed", 5, "broken")
        assert killed.wait(30) == -signal.SIGKILL
        clean = _child(tmp_path, "clean", 7, "ok")
        assert clean.wait(30) == 0
        files = sorted(p.name for p in tmp_path.glob("*.db"))
        assert f"gauge_livemostrecent_{killed.pid}.db" in files  # nobody said it died
        assert f"gauge_livemostrecent_{clean.pid}.db" not in files  # it said so itself
        assert not any(n.startswith("gauge_all") for n in files)  # scrape-time gauges: no file
        registry = CollectorRegistry()
        _FilesCollector(registry, str(tmp_path))
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples
        }
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(30)
    assert f"gauge_livemostrecent_{killed.pid}.db" not in {p.name for p in tmp_path.glob("*")}
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples[("clearscan_http_requests_total", healthz)] == 5 + 7 + 11
    assert samples[("clearscan_audit_chain_ok", ())] == 1  # the live process's, not the dead one's
    assert samples[("clearscan_audit_chain_events", ())] == 11
    assert not any(name == "clearscan_model_available" for name, _ in samples)
