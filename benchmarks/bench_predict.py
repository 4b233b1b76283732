"""Benchmark POST /api/v1/predict on a real server (`make bench`).

Starts `clearscan serve` on a free port with a fresh data dir, measures time to /readyz, then, for
a 512 x 512 16-bit DICOM chest X-ray, p50/p95 latency with and without explanation, the server's
overhead (HTTP time minus the reply's inference_ms), and resident memory after 500 and 1,000
predictions. Prints a table and writes bench-results/predict.json."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import chest_like, dicom_bytes  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run(n: int, total: int) -> dict[str, object]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="clearscan-bench-")
    env = {
        **os.environ,
        "CLEARSCAN_ADMIN_PASSWORD": "bench-password-123",
        "CLEARSCAN_LOG_LEVEL": "WARNING",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clearscan.cli.main",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            data_dir,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 60:
                    raise SystemExit("server did not become ready")
                time.sleep(0.05)
            ready_s = time.perf_counter() - t0
            tok = c.post(
                "/api/v1/auth/token", data={"username": "admin", "password": "bench-password-123"}
            )
            c.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
            dcm = dicom_bytes(chest_like(512, 7), bits=16)

            def once(explain: bool) -> tuple[float, float]:
                s = time.perf_counter()
                r = c.post(
                    "/api/v1/predict",
                    files=[("file", ("cxr.dcm", dcm, "application/dicom"))],
                    data={"explain": "true" if explain else "false"},
                )
                http_ms = (time.perf_counter() - s) * 1000
                r.raise_for_status()
                return http_ms, float(r.json()["predictions"][0]["inference_ms"])

            for _ in range(20):
                once(True)
                once(False)
            res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(n):  # interleaved, so drift affects both alike
                res[True].append(once(True))
                res[False].append(once(False))
            done = 40 + 2 * n
            while done < 500:
                once(True)
                done += 1
            rss_500 = rss_mb(proc.pid)
            while done < total:
                once(True)
                done += 1
            rss_1000 = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)

    def summary(rows: list[tuple[float, float]]) -> dict[str, float]:
        http = [h for h, _ in rows]
        model = [m for _, m in rows]
        return {
            "p50_ms": round(pct(http, 0.5), 2),
            "p95_ms": round(pct(http, 0.95), 2),
            "inference_p50_ms": round(statistics.median(model), 3),
            "overhead_p50_ms": round(statistics.median(h - m for h, m in rows), 2),
        }

    ex, plain = summary(res[True]), summary(res[False])
    return {
        "image": "512x512 16-bit DICOM (uncompressed), synthetic chest X-ray",
        "requests_per_variant": n,
        "ready_s": round(ready_s, 2),
        "explained": ex,
        "unexplained": plain,
        "explain_ratio_p50": round(ex["p50_ms"] / plain["p50_ms"], 3),
        "rss_mb_after_500": round(rss_500, 1),
        "rss_mb_after_1000": round(rss_1000, 1),
        "predictions_total": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=200, help="timed requests per variant")
    ap.add_argument(
        "--total", type=int, default=1000, help="predictions before the last RSS reading"
    )
    args = ap.parse_args()
    out = run(args.n, args.total)
    print(json.dumps(out, indent=2))
    res = ROOT / "bench-results"
    res.mkdir(exist_ok=True)
    (res / "predict.json").write_text(json.dumps(out, indent=2))
    ex, plain = out["explained"], out["unexplained"]
    targets = [
        ("explained / unexplained p50 <= 1.25", out["explain_ratio_p50"] <= 1.25),  # type: ignore[operator]
        ("explained p50 <= 60 ms", ex["p50_ms"] <= 60),  # type: ignore[index]
        ("RSS after 1,000 <= 600 MB", out["rss_mb_after_1000"] <= 600),  # type: ignore[operator]
        ("ready <= 15 s", out["ready_s"] <= 15),  # type: ignore[operator]
    ]
    _ = plain
    for name, ok in targets:
        print(f"{'PASS' if ok else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
