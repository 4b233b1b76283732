"""Binary vessel masks rasterised from analytic shapes (a pixel is vessel when its centre lies
inside the shape), with known widths and cosine-shaped narrowings."""

from __future__ import annotations

import math

import numpy as np


def narrowing(
    s: np.ndarray, width: float, percent: float, centre: float, length: float
) -> np.ndarray:
    """Width along arc length ``s``: ``width`` outside, a cosine dip to
    ``width * (1 - percent / 100)`` at ``centre``, ``length`` long in all."""
    out = np.full(s.shape, float(width))
    u = (s - centre) / length
    inside = np.abs(u) < 0.5
    depth = width * percent / 100.0
    out[inside] -= depth * 0.5 * (1.0 + np.cos(2.0 * math.pi * u[inside]))
    return out


def straight_tube(
    width: float,
    *,
    length: float = 200.0,
    angle_deg: float = 0.0,
    percent: float = 0.0,
    lesion_length: float = 40.0,
    margin: int = 20,
    offset: float = 0.3,
) -> tuple[np.ndarray, dict[str, float]]:
    """A flat-ended straight tube, centre line through the image centre at ``angle_deg``."""
    a = math.radians(angle_deg)
    ext = length * abs(math.cos(a)) + width * abs(math.sin(a))
    exty = length * abs(math.sin(a)) + width * abs(math.cos(a))
    w_px = int(ext + 2 * margin)
    h_px = int(exty + 2 * margin)
    cy, cx = h_px / 2 + offset, w_px / 2 + offset / 3
    yy, xx = np.mgrid[0:h_px, 0:w_px].astype(float)
    dy, dx = yy - cy, xx - cx
    t = dx * math.cos(a) + dy * math.sin(a)  # along
    n = -dx * math.sin(a) + dy * math.cos(a)  # across
    s = t + length / 2
    widths = narrowing(s, width, percent, length / 2, lesion_length)
    mask = (np.abs(n) < widths / 2) & (s >= 0) & (s <= length)
    truth = {"x": cx, "y": cy, "mld": width * (1 - percent / 100), "rvd": width}
    return mask, truth


def arc_tube(
    width: float,
    *,
    radius: float = 120.0,
    sweep_deg: float = 120.0,
    percent: float = 0.0,
    lesion_length: float = 40.0,
) -> tuple[np.ndarray, dict[str, float]]:
    """A tube along a circular arc of ``radius`` (centreline), sweeping ``sweep_deg``."""
    size = int(2 * radius + width + 40)
    c = size / 2 + 0.3
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    r = np.hypot(yy - c, xx - c)
    theta = np.arctan2(yy - c, xx - c)  # -pi..pi
    half = math.radians(sweep_deg) / 2
    s = (theta + half) * radius
    arc_len = 2 * half * radius
    widths = narrowing(s, width, percent, arc_len / 2, lesion_length)
    mask = (np.abs(r - radius) < widths / 2) & (np.abs(theta) <= half)
    truth = {"x": c + radius, "y": c, "mld": width * (1 - percent / 100), "rvd": width}
    return mask, truth


def capsule(
    mask: np.ndarray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    width: float,
    *,
    percent: float = 0.0,
    lesion_length: float = 40.0,
) -> np.ndarray:
    """OR into ``mask`` a round-ended tube from p0 to p1 ((y, x) points), with an optional
    narrowing centred halfway."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    vy, vx = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(vy, vx)
    t = ((yy - p0[0]) * vy + (xx - p0[1]) * vx) / length
    tc = np.clip(t, 0, length)
    dist = np.hypot(yy - (p0[0] + tc * vy / length), xx - (p0[1] + tc * vx / length))
    widths = narrowing(tc, width, percent, length / 2, lesion_length)
    return mask | (dist < widths / 2)


def bifurcation(
    width: float = 14.0, *, percent: float = 60.0, lesion_length: float = 40.0
) -> tuple[np.ndarray, dict[str, float]]:
    """A Y: a trunk from the top splitting into two branches; the right branch has a narrowing
    halfway along it."""
    mask = np.zeros((360, 320), dtype=bool)
    fork = (150.0, 160.0)
    mask = capsule(mask, (20.0, 160.0), fork, width * 1.2)
    mask = capsule(mask, fork, (330.0, 50.0), width)
    right_end = (330.0, 270.0)
    mask = capsule(mask, fork, right_end, width, percent=percent, lesion_length=lesion_length)
    mid = ((fork[0] + right_end[0]) / 2, (fork[1] + right_end[1]) / 2)
    truth = {"x": mid[1], "y": mid[0], "mld": width * (1 - percent / 100), "rvd": width}
    return mask, truth


def tree(size: int = 512) -> np.ndarray:
    """A coronary-like tree: a tapering main vessel with side branches and two narrowings."""
    mask = np.zeros((size, size), dtype=bool)
    k = size / 512
    main = [(30, 250), (140, 230), (260, 260), (380, 240), (490, 270)]
    widths = [18, 16, 13, 10]
    for i in range(len(main) - 1):
        p0 = (main[i][0] * k, main[i][1] * k)
        p1 = (main[i + 1][0] * k, main[i + 1][1] * k)
        pct = 55.0 if i == 1 else 0.0
        mask = capsule(mask, p0, p1, widths[i] * k, percent=pct, lesion_length=30 * k)
    branches = [
        ((140, 230), (250, 80), 10, 0.0),
        ((260, 260), (330, 430), 9, 70.0),
        ((380, 240), (470, 120), 7, 0.0),
        ((440, 255), (500, 420), 8, 0.0),
    ]
    for a, b, wd, pct in branches:
        mask = capsule(
            mask,
            (a[0] * k, a[1] * k),
            (b[0] * k, b[1] * k),
            wd * k,
            percent=pct,
            lesion_length=30 * k,
        )
    return mask
