"""QCA speed: `measure_vessels` on a 512 x 512 coronary-like tree mask drawn here (a tapering
main vessel 18 -> 10 px wide with four side branches 7-10 px wide and two narrowings).

    .venv/bin/python benchmarks/bench_measure.py            # 50 runs after 3 warm-up runs
    .venv/bin/python benchmarks/bench_measure.py --runs 200

Prints the median and p95 wall time per call, and the stenoses found."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clearscan.measure import measure_vessels  # noqa: E402


def _capsule(
    mask: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], width: float, pct: float
) -> None:
    """OR a round-ended tube from p0 to p1 ((y, x)) into mask, with a cosine narrowing of pct %
    (30 px long) halfway along it."""
    h, w = mask.shape
    pad = width
    y0, y1 = int(max(0, min(p0[0], p1[0]) - pad)), int(min(h, max(p0[0], p1[0]) + pad + 1))
    x0, x1 = int(max(0, min(p0[1], p1[1]) - pad)), int(min(w, max(p0[1], p1[1]) + pad + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    vy, vx = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(vy, vx)
    t = np.clip(((yy - p0[0]) * vy + (xx - p0[1]) * vx) / length, 0, length)
    dist = np.hypot(yy - (p0[0] + t * vy / length), xx - (p0[1] + t * vx / length))
    u = (t - length / 2) / 30.0
    widths = np.where(
        np.abs(u) < 0.5, width * (1 - pct / 100 * 0.5 * (1 + np.cos(2 * math.pi * u))), width
    )
    mask[y0:y1, x0:x1] |= dist < widths / 2


def tree_mask(size: int = 512) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    main = [(30, 250), (140, 230), (260, 260), (380, 240), (490, 270)]
    for i, width in enumerate((18.0, 16.0, 13.0, 10.0)):
        _capsule(mask, main[i], main[i + 1], width, 55.0 if i == 1 else 0.0)
    for p0, p1, width, pct in (
        ((140, 230), (250, 80), 10.0, 0.0),
        ((260, 260), (330, 430), 9.0, 70.0),
        ((380, 240), (470, 120), 7.0, 0.0),
        ((440, 255), (500, 420), 8.0, 0.0),
    ):
        _capsule(mask, p0, p1, width, pct)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    mask = tree_mask()
    for _ in range(3):
        result = measure_vessels(mask)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = measure_vessels(mask)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    print(
        f"512 x 512 tree mask, {int(mask.sum())} vessel px, {len(result.segments)} segments, "
        f"{args.runs} runs: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms"
    )
    for s in result.stenoses:
        print(
            f"  stenosis {s.percent_stenosis:.1f} % at x={s.x} y={s.y} (segment {s.segment}): "
            f"MLD {s.mld:.2f} px, RVD {s.rvd:.2f} px, length {s.lesion_length:.1f} px"
        )


if __name__ == "__main__":
    main()
