"""Synthetic X-ray coronary angiograms with exact ground truth: vessel mask, tree, stenoses.

No real angiograms with vessel masks can be shipped, so the demonstration vessel-segmentation
model is trained and evaluated on these, and the stenosis measurement (percent diameter
stenosis, %DS = (1 - MLD / RVD) x 100) is checked against the known lesions.

How one image is made (docs/synthetic-angiograms.md has the details and the ranges):

1. A coronary-like tree: a main vessel from an ostium near an image border, smooth curved
   branches (heading = integral of low-frequency curvature noise), side branches budding off
   recursively, radii split by Murray's law (r_parent^3 = r_continuing^3 + r_side^3) and
   tapering along each branch, down to about 1 px.
2. One to three stenoses: cosine-shaped narrowings of known severity and length on branches of
   reference radius >= 3 px, in stretches kept free of branch points and of other vessels.
3. Rendering by path length: each pixel's optical depth is mu * (chord through the tube of the
   local radius) = mu * 2 * sqrt(r^2 - d^2), summed over crossing vessels; a contrast-filled
   catheter from a border to the ostium, rendered the same way, is not in the mask; a smooth
   background (random field, gradient, ribs, diaphragm, vignetting); intensity exp(-depth),
   Gaussian blur (PSF), Poisson quantum noise plus electronic noise, windowing to 8 bits.

Coordinates: x is the column, y the row, pixel centres at integer coordinates. The mask holds
exactly the pixels whose centre lies inside a vessel (distance to the centreline below the
local radius), the same test that makes the rendered chord positive. Everything comes from one
numpy Generator seeded by ``seed``: the same seed gives byte-identical arrays.

Why one module: the tree, the lesion planning and the renderer share private drafts and one
seeded random stream in a fixed order; split apart they would only hand those around.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage, special

from clearscan.errors import Invalid

__all__ = [
    "GENERATOR_VERSION",
    "Branch",
    "Catheter",
    "Stenosis",
    "SyntheticAngiogram",
    "generate",
    "image_seed",
    "write_dataset",
]

GENERATOR_VERSION = "1.0"
SEED_STRIDE = 100003  # image i of a set with seed S is generate(S * SEED_STRIDE + i)
CSV_COLUMNS = (
    "image",
    "branch",
    "x",
    "y",
    "percent_stenosis",
    "mld_px",
    "rvd_px",
    "lesion_length_px",
)

_STEP = 1.0  # centreline sampling, px
_R_MIN = 1.0  # smallest radius, px
_MAX_BRANCHES = 90
_MAX_DEPTH = 5
_ATTEMPTS = 10


@dataclass(frozen=True, eq=False)
class Branch:
    """One vessel segment of the tree: centreline ``points`` (n, 2) as (x, y) at 1 px steps,
    ``radii`` (n,) in px with the stenoses applied, ``reference_radii`` without them.
    ``parent_index`` is the parent's centreline point where this branch starts."""

    id: int
    parent: int | None
    parent_index: int | None
    depth: int
    points: np.ndarray
    radii: np.ndarray
    reference_radii: np.ndarray


@dataclass(frozen=True, eq=False)
class Catheter:
    """The contrast-filled catheter: centreline (n, 2) as (x, y) and its constant radius."""

    points: np.ndarray
    radius: float


@dataclass(frozen=True)
class Stenosis:
    """One imposed lesion. (x, y) is the narrowest point, centreline point ``index`` of
    ``branch``; %DS = (1 - mld_px / rvd_px) x 100, the reference diameter being the tapered
    vessel without the lesion at that point; the length is measured along the centreline."""

    branch: int
    index: int
    x: float
    y: float
    percent_stenosis: float
    mld_px: float
    rvd_px: float
    lesion_length_px: float


@dataclass(frozen=True, eq=False)
class SyntheticAngiogram:
    """``image``: uint8 (size, size), vessels dark. ``mask``: bool, the vessel lumen.
    ``catheter_mask``: bool, the catheter (never in ``mask``'s definition; pixels may overlap
    where the catheter crosses a vessel). ``params``: the appearance values drawn for it."""

    seed: int
    size: int
    image: np.ndarray
    mask: np.ndarray
    catheter_mask: np.ndarray
    stenoses: tuple[Stenosis, ...]
    branches: tuple[Branch, ...]
    catheter: Catheter | None
    params: dict[str, float]


def image_seed(base_seed: int, index: int) -> int:
    """The seed of image ``index`` of a set generated with ``base_seed``."""
    return base_seed * SEED_STRIDE + index


# ------------------------------------------------------------------------------------ tree


@dataclass
class _Bud:
    index: int
    r_side: float


@dataclass
class _Draft:
    id: int
    parent: int | None
    parent_index: int | None
    depth: int
    points: np.ndarray
    heading: np.ndarray
    r0: float
    taper: float
    contrast: float
    buds: list[_Bud]
    zone: tuple[int, float, float, float] | None = None  # (centre index, length, lo s, hi s)
    reference: np.ndarray | None = None


def _smooth_noise(rng: np.random.Generator, n: int, corr: float) -> np.ndarray:
    """Low-frequency noise of unit standard deviation and correlation length ``corr``."""
    pad = int(3 * corr) + 1
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), corr, mode="wrap")[pad:-pad]
    return x / max(float(np.std(x)), 1e-6) if n > 1 else x


def _grow(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    size: int,
    curvature: float,
    corr: float,
    bend: float = 0.0,
    pad: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curve from ``start``: heading = integral of curvature noise (plus an initial
    bend of total angle ``bend``), cut where it leaves the image by more than ``pad``."""
    n = max(int(length / _STEP), 2)
    s = np.arange(n) * _STEP
    kappa = curvature * _smooth_noise(rng, n, corr / _STEP)
    lam = max(corr * 0.6, 5.0)
    kappa = kappa + bend * np.exp(-s / lam) / lam
    theta = heading + np.concatenate([[0.0], np.cumsum(kappa[:-1] * _STEP)])
    steps = _STEP * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    pts = start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps[:-1], axis=0)])
    out = np.any((pts < -pad) | (pts > size - 1 + pad), axis=1)
    if out.any():
        k = int(np.argmax(out)) + 1
        pts, theta = pts[:k], theta[:k]
    return pts, theta


def _inside(p: np.ndarray, size: int, margin: float) -> bool:
    return bool(np.all(p >= margin) and np.all(p <= size - 1 - margin))


def _reference_radii(d: _Draft) -> np.ndarray:
    """Linear taper times a smooth Murray's-law drop after each side branch."""
    n = len(d.points)
    s = np.arange(n) * _STEP
    r = d.r0 * (1.0 - d.taper * s / max(s[-1], 1.0))
    for bud in d.buds:
        r_here = float(r[bud.index])
        ratio = max(r_here**3 - bud.r_side**3, _R_MIN**3) ** (1 / 3) / r_here
        ramp = max(2.0 * bud.r_side, 2.0)
        u = np.clip((s - s[bud.index]) / ramp, 0.0, 1.0)
        r = r * (1.0 - (1.0 - ratio) * (3 * u**2 - 2 * u**3))
    return np.maximum(r, _R_MIN)


def _plan_zone(rng: np.random.Generator, d: _Draft, size: int, r_les: float) -> None:
    """Reserve a stretch for a possible lesion; no side branch buds inside it."""
    n = len(d.points)
    s_len = (n - 1) * _STEP
    k = rng.uniform(3.0, 6.0)
    for _ in range(8):
        s0 = rng.uniform(0.05, 0.45) * s_len
        r_est = d.r0 * (1.0 - d.taper * s0 / max(s_len, 1.0))
        if r_est * 0.9 < r_les:
            continue
        rvd = 2.0 * r_est
        length = k * rvd
        half = length / 2 + 2.0 * rvd + 4.0
        lo, hi = s0 - half, s0 + half
        if lo < 2.0 * d.r0 or hi > s_len - 4.0:
            continue
        i_lo, i_hi = int(lo / _STEP), math.ceil(hi / _STEP)
        seg = d.points[i_lo : i_hi + 1]
        if not (_inside(seg.min(0), size, r_est + 6) and _inside(seg.max(0), size, r_est + 6)):
            continue
        d.zone = (round(s0 / _STEP), length, lo, hi)
        return


def _place_buds(
    rng: np.random.Generator, d: _Draft, size: int, scale: float, budget: int
) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """Side-branch positions along ``d`` (skipping its reserved zone); returns the children
    as (bud index, path, headings, radius), at most ``budget``, and records the buds on ``d``."""
    n = len(d.points)
    kids: list[tuple[int, np.ndarray, np.ndarray, float]] = []
    if d.depth >= _MAX_DEPTH:
        return kids
    sign = rng.choice([-1.0, 1.0])
    s = (rng.uniform(0.05, 0.15) * size) if d.depth == 0 else max(3.0 * d.r0, 8.0)
    first = d.depth == 0 or d.r0 >= 4.0 * scale
    while s < (n - 1) * _STEP - 10.0 and len(kids) < budget:
        if d.zone is not None and d.zone[2] - 3.0 * d.r0 <= s <= d.zone[3]:
            s = d.zone[3] + 1.0
            continue
        i = int(s / _STEP)
        r_here = float(_reference_radii(d)[i])
        if first and rng.random() < 0.7:  # the left main's split into two large arteries
            ratio = rng.uniform(0.68, 0.79)
        else:
            ratio = rng.uniform(0.35, 0.65) if d.depth == 0 else rng.uniform(0.45, 0.79)
        r_side = ratio * r_here
        if r_side < _R_MIN:
            break
        if rng.random() < 0.65:
            sign = -sign
        angle = float(rng.uniform(0.55, 1.3) if ratio > 0.67 else rng.uniform(0.5, 1.2))
        heading = float(d.heading[i]) + sign * angle
        length = min(r_side * rng.uniform(50.0, 110.0), 1.2 * size)
        bend = -sign * angle * rng.uniform(0.0, 0.4)
        path, theta = _grow(
            rng, d.points[i], heading, length, size, rng.uniform(1 / 420, 1 / 200) / scale,
            rng.uniform(25.0, 45.0) * scale, bend,
        )  # fmt: skip
        inside = np.all((path >= 0) & (path <= size - 1), axis=1).sum() * _STEP
        if inside >= 12.0 * scale:
            d.buds.append(_Bud(i, r_side))
            kids.append((i, path, theta, r_side))
            first = False
        s += max(14.0 * scale, 7.0 * r_here) * rng.uniform(0.5, 1.5)
    return kids


def _tree(
    rng: np.random.Generator, size: int, scale: float
) -> tuple[list[_Draft], np.ndarray, float]:
    """The branches (parents before children) and the ostium's position and heading."""
    # canonical frame: ostium near the left border, the tree grows towards the centre
    inset = rng.uniform(0.05, 0.12) * size
    ostium = np.array([inset, rng.uniform(0.15, 0.5) * size])
    centre = np.array([size / 2, size / 2])
    to_c = centre - ostium
    heading = math.atan2(to_c[1], to_c[0]) + rng.uniform(-0.35, 0.35)
    r_main = rng.uniform(4.5, 7.5) * scale
    r_les = 3.0 * scale
    drafts: list[_Draft] = []
    path, theta = _grow(
        rng, ostium, heading, 1.6 * size, size, rng.uniform(1 / 700, 1 / 350) / scale,
        rng.uniform(50.0, 90.0) * scale,
    )  # fmt: skip
    queue: list[tuple[int | None, int | None, int, np.ndarray, np.ndarray, float]] = [
        (None, None, 0, path, theta, r_main)
    ]
    while queue and len(drafts) < _MAX_BRANCHES:
        parent, p_index, depth, path, theta, r0 = queue.pop(0)
        d = _Draft(
            id=len(drafts), parent=parent, parent_index=p_index, depth=depth, points=path,
            heading=theta, r0=r0, taper=rng.uniform(0.15, 0.4),
            contrast=rng.uniform(0.85, 1.0) ** depth, buds=[],
        )  # fmt: skip
        if r0 >= r_les * 1.05:
            _plan_zone(rng, d, size, r_les)
        drafts.append(d)
        budget = _MAX_BRANCHES - len(drafts) - len(queue)
        for i, kid_path, kid_theta, r_side in _place_buds(rng, d, size, scale, budget):
            queue.append((d.id, i, depth + 1, kid_path, kid_theta, r_side))
    for d in drafts:
        d.reference = _reference_radii(d)
    return drafts, ostium, heading


def _lesions(
    drafts: list[_Draft],
    catheter: Catheter | None,
    r_les: float,
) -> list[tuple[_Draft, int, float, float]]:
    """The reserved zones that can hold a measurable lesion clear of every other vessel:
    (branch, centre index, length, reference radius)."""
    ok = []
    for d in drafts:
        if d.zone is None or d.reference is None:
            continue
        i0, length, _, _ = d.zone
        r_ref = float(d.reference[i0])
        if r_ref < r_les or not 3.0 <= length / (2 * r_ref) <= 8.0:
            continue
        reach = length / 2 + 2 * r_ref
        lo, hi = max(int((i0 * _STEP - reach) / _STEP), 0), int((i0 * _STEP + reach) / _STEP)
        p, rp = d.points[lo : hi + 1], d.reference[lo : hi + 1]
        others = [(o.points, o.reference) for o in drafts if o is not d]
        if catheter is not None:
            cp = catheter.points
            others.append((cp, np.full(len(cp), catheter.radius)))
        clear = True
        for q, rq in others:
            if q is None or rq is None:
                continue
            box = (q[:, 0] > p[:, 0].min() - 40) & (q[:, 0] < p[:, 0].max() + 40)
            box &= (q[:, 1] > p[:, 1].min() - 40) & (q[:, 1] < p[:, 1].max() + 40)
            if not box.any():
                continue
            dist = np.hypot(*(p[:, None, :] - q[None, box, :]).transpose(2, 0, 1))
            if np.any(dist < rp[:, None] + rq[None, box] + 3.0):
                clear = False
                break
        if clear:
            ok.append((d, i0, length, r_ref))
    return ok


def _catheter(
    rng: np.random.Generator, ostium: np.ndarray, heading: float, size: int, r_main: float
) -> Catheter:
    """A cubic Bezier from the bottom border up to the ostium, arriving at an angle to the
    vessel's initial heading (canonical frame)."""
    arrive = heading - rng.uniform(0.8, 1.6)  # arrives from below, turned from the vessel
    direction = np.array([math.cos(arrive), math.sin(arrive)])
    if direction[1] > -0.2:  # must come up from below
        direction = np.array([0.3, -1.0]) / math.hypot(0.3, 1.0)
    a1 = rng.uniform(0.15, 0.3) * size
    if direction[0] > 0:
        a1 = min(a1, 0.9 * ostium[0] / direction[0])
    radius = max(rng.uniform(0.45, 0.65) * r_main, 2.0 * size / 512, 1.2)
    end = np.array([rng.uniform(0.15, 0.5) * size, size - 1 + 3 * radius])
    c1 = ostium - a1 * direction
    c2 = end - np.array([0.0, rng.uniform(0.2, 0.4) * size])
    u = np.linspace(0.0, 1.0, 4 * size)[:, None]
    curve = (1 - u) ** 3 * ostium + 3 * (1 - u) ** 2 * u * c1 + 3 * (1 - u) * u**2 * c2 + u**3 * end
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(curve, axis=0).T))])
    s = np.arange(0.0, arc[-1], _STEP)
    pts = np.stack([np.interp(s, arc, curve[:, 0]), np.interp(s, arc, curve[:, 1])], axis=1)
    return Catheter(points=pts, radius=float(radius))


# --------------------------------------------------------------------------------- render


def _tube(
    points: np.ndarray, radii: np.ndarray, weight: np.ndarray, size: int
) -> tuple[tuple[int, int], np.ndarray] | None:
    """Optical depth weight * 2 * sqrt(r^2 - d^2) of one tube (the maximum over its segments),
    on the tube's bounding box clipped to the image: ((y0, x0), array); None if outside."""
    if len(points) < 2:
        points = np.concatenate([points, points])
        radii, weight = np.repeat(radii, 2), np.repeat(weight, 2)
    rmax = float(radii.max())
    lo = np.maximum(np.floor(points.min(0) - rmax - 1), 0).astype(int)
    hi = np.minimum(np.ceil(points.max(0) + rmax + 1), size - 1).astype(int)
    if np.any(hi < lo):
        return None
    a, b = points[:-1], points[1:]
    seg = b - a
    length2 = np.maximum((seg**2).sum(1), 1e-12)
    w = math.ceil(2 * rmax + float(np.sqrt(length2.max()))) + 2
    origin = np.floor(np.minimum(a, b) - rmax).astype(int)
    off = np.arange(w)
    gx = origin[:, 0, None] + off  # (m, w)
    gy = origin[:, 1, None] + off
    px = (gx - a[:, 0, None])[:, None, :]  # (m, 1, w)
    py = (gy - a[:, 1, None])[:, :, None]  # (m, w, 1)
    sx, sy = seg[:, 0, None, None], seg[:, 1, None, None]
    t = np.clip((px * sx + py * sy) / length2[:, None, None], 0.0, 1.0)
    d2 = (px - t * sx) ** 2 + (py - t * sy) ** 2
    r = radii[:-1, None, None] + t * (radii[1:] - radii[:-1])[:, None, None]
    val2 = r**2 - d2
    xx = np.broadcast_to(gx[:, None, :], val2.shape)
    yy = np.broadcast_to(gy[:, :, None], val2.shape)
    keep = (val2 > 0) & (xx >= lo[0]) & (xx <= hi[0]) & (yy >= lo[1]) & (yy <= hi[1])
    wt = weight[:-1, None, None] + t * (weight[1:] - weight[:-1])[:, None, None]
    vals = (2.0 * np.sqrt(val2[keep]) * wt[keep]).astype(np.float32)
    canvas = np.zeros((hi[1] - lo[1] + 1, hi[0] - lo[0] + 1), np.float32)
    flat = (yy[keep] - lo[1]) * canvas.shape[1] + (xx[keep] - lo[0])
    np.maximum.at(canvas.reshape(-1), flat, vals)
    return (int(lo[1]), int(lo[0])), canvas


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, float]]:
    """Optical depth of the anatomy: smooth random field, gradient, ribs, diaphragm, vignette."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def field(n: int) -> np.ndarray:
        f = ndimage.zoom(rng.standard_normal((n, n)).astype(np.float32), size / n, order=3)
        f = f[:size, :size]
        return (f - f.mean()) / max(float(f.std()), 1e-6)

    coarse, fine = rng.uniform(0.04, 0.11), rng.uniform(0.015, 0.04)
    bg = coarse * field(6) + fine * field(24)
    phi, grad = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.4)
    bg += grad * ((xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi))
    n_ribs = int(rng.integers(2, 7))
    rot = rng.uniform(-0.6, 0.6)
    u = (xx - 0.5) * math.cos(rot) + (yy - 0.5) * math.sin(rot)
    v = -(xx - 0.5) * math.sin(rot) + (yy - 0.5) * math.cos(rot)
    first, gap = rng.uniform(-0.6, -0.3), rng.uniform(0.12, 0.2)
    for k in range(n_ribs):
        centre = first + k * gap + rng.uniform(-0.6, 0.6) * u**2 + rng.uniform(-0.15, 0.15) * u
        half, edge = rng.uniform(0.02, 0.04), rng.uniform(0.003, 0.01)
        band = special.expit((half - np.abs(v - centre)) / edge)
        bg += rng.uniform(0.04, 0.12) * band
    if rng.random() < 0.7:  # diaphragm / heart border: a large disc entering from a side
        ang = rng.uniform(0, 2 * math.pi)
        radius = rng.uniform(0.6, 1.1)
        dist = rng.uniform(0.75, 1.35) + radius - 0.5
        cx, cy = 0.5 + dist * math.cos(ang), 0.5 + dist * math.sin(ang)
        signed = radius - np.hypot(xx - cx, yy - cy)
        bg += rng.uniform(0.15, 0.45) * special.expit(signed / rng.uniform(0.008, 0.025))
    vignette = rng.uniform(0.0, 0.35)
    bg += vignette * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.5
    return bg.astype(np.float32), {"background_field": float(coarse), "gradient": float(grad)}


# ------------------------------------------------------------------------------- generate


def generate(
    seed: int,
    *,
    size: int = 512,
    n_stenoses: int | None = None,
    catheter: bool = True,
    noise: bool = True,
) -> SyntheticAngiogram:
    """One synthetic angiogram. ``n_stenoses`` None draws 1-3 (fewer only if no clear stretch
    is found in ten tries); ``noise=False`` leaves out the quantum and electronic noise."""
    if not 128 <= size <= 2048:
        raise Invalid("size must be between 128 and 2048 pixels")
    if n_stenoses is not None and not 0 <= n_stenoses <= 3:
        raise Invalid("n_stenoses must be between 0 and 3")
    if seed < 0:
        raise Invalid("seed must be non-negative")
    scale = size / 512.0
    rng = np.random.default_rng(seed)
    want = int(rng.integers(1, 4)) if n_stenoses is None else n_stenoses
    # 8 orientations of the canonical frame (ostium near the left border)
    turns, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
    appearance_seed = int(rng.integers(0, 2**63))
    best: Any = None
    for attempt in range(_ATTEMPTS):
        trng = np.random.default_rng([seed, attempt])
        drafts, ostium, heading = _tree(trng, size, scale)
        cath = _catheter(trng, ostium, heading, size, drafts[0].r0) if catheter else None
        found = _lesions(drafts, cath, 3.0 * scale)
        if best is None or len(found) > len(best[3]):
            best = (trng, drafts, cath, found)
        if len(found) >= want:
            break
    trng, drafts, cath, found = best
    order = trng.permutation(len(found))[:want]
    chosen = [found[k] for k in sorted(order)]

    def orient(p: np.ndarray) -> np.ndarray:
        q = p.copy()
        if flip:
            q[:, 0] = size - 1 - q[:, 0]
        for _ in range(turns):  # rotate 90 degrees about the image centre
            q = np.stack([size - 1 - q[:, 1], q[:, 0]], axis=1)
        return q

    arng = np.random.default_rng(appearance_seed)
    mu = arng.uniform(0.035, 0.07) / scale
    branches: list[Branch] = []
    stenoses: list[Stenosis] = []
    weights: list[np.ndarray] = []
    lesion_of = {d.id: (i0, length, r_ref) for d, i0, length, r_ref in chosen}
    for d in drafts:
        assert d.reference is not None
        ref = d.reference
        radii = ref.copy()
        pts = orient(d.points)
        if d.id in lesion_of:
            i0, length, r_ref = lesion_of[d.id]
            severity = float(trng.uniform(0.2, 0.8))
            s = (np.arange(len(radii)) - i0) * _STEP
            bump = np.where(np.abs(s) < length / 2, 0.5 * (1 + np.cos(2 * np.pi * s / length)), 0)
            radii = ref * (1.0 - severity * bump)
            stenoses.append(
                Stenosis(
                    branch=d.id, index=i0, x=float(pts[i0, 0]), y=float(pts[i0, 1]),
                    percent_stenosis=100.0 * severity, mld_px=float(2 * radii[i0]),
                    rvd_px=float(2 * r_ref), lesion_length_px=float(length),
                )
            )  # fmt: skip
        for arr in (pts, radii, ref):
            arr.setflags(write=False)
        branches.append(Branch(d.id, d.parent, d.parent_index, d.depth, pts, radii, ref))
        along = 1.0 + arng.uniform(0.05, 0.15) * _smooth_noise(arng, len(radii), 30.0)
        weights.append(mu * d.contrast * np.clip(along, 0.6, 1.4))

    # optical depth: sum over vessels; a child adds only what exceeds its parent's chord
    depth = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    tubes: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
    for br, wt in zip(branches, weights, strict=True):
        tube = _tube(br.points, br.radii, wt, size)
        if tube is None:
            continue
        tubes[br.id] = tube
        (y0, x0), val = tube
        add = val
        if br.parent is not None and br.parent in tubes:
            (py0, px0), pval = tubes[br.parent]
            ya, xa = max(y0, py0), max(x0, px0)
            yb = min(y0 + val.shape[0], py0 + pval.shape[0])
            xb = min(x0 + val.shape[1], px0 + pval.shape[1])
            if ya < yb and xa < xb:
                add = val.copy()
                sub = add[ya - y0 : yb - y0, xa - x0 : xb - x0]
                par = pval[ya - py0 : yb - py0, xa - px0 : xb - px0]
                sub[:] = np.where(par > 0, np.maximum(sub - par, 0), sub)
        depth[y0 : y0 + val.shape[0], x0 : x0 + val.shape[1]] += add
        mask[y0 : y0 + val.shape[0], x0 : x0 + val.shape[1]] |= val > 0
    cath_mask = np.zeros((size, size), bool)
    cath_out = None
    mu_cath = mu * arng.uniform(0.8, 1.15)
    if cath is not None:
        cpts = orient(cath.points)
        cpts.setflags(write=False)
        cath_out = Catheter(points=cpts, radius=cath.radius)
        ctube = _tube(cpts, np.full(len(cpts), cath.radius), np.full(len(cpts), mu_cath), size)
        if ctube is not None:
            (y0, x0), val = ctube
            depth[y0 : y0 + val.shape[0], x0 : x0 + val.shape[1]] += val
            cath_mask[y0 : y0 + val.shape[0], x0 : x0 + val.shape[1]] |= val > 0

    bg, bg_params = _background(arng, size)
    blur = arng.uniform(0.7, 1.5) * scale
    clean = ndimage.gaussian_filter(np.exp(-(bg + depth)), blur)
    photons = arng.uniform(150.0, 900.0)
    electronic = arng.uniform(0.002, 0.01)
    if noise:
        signal = arng.poisson(photons * clean) / photons
        signal = signal + electronic * arng.standard_normal(clean.shape)
    else:
        signal = clean.astype(np.float64)
    lo, hi = np.percentile(clean, [0.5, 99.5])
    gamma = arng.uniform(0.8, 1.25)
    v = np.clip((signal - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** gamma
    image = np.clip(np.rint(arng.uniform(10, 30) + arng.uniform(195, 225) * v), 0, 255)
    image = image.astype(np.uint8)
    for arr in (image, mask, cath_mask):
        arr.setflags(write=False)
    params = {
        "mu_per_px": float(mu),
        "mu_catheter_per_px": float(mu_cath),
        "blur_sigma_px": float(blur),
        "photons_per_px": float(photons),
        "electronic_noise": float(electronic),
        "gamma": float(gamma),
        "orientation": float(turns + 4 * flip),
        **bg_params,
    }
    return SyntheticAngiogram(
        seed=seed, size=size, image=image, mask=mask, catheter_mask=cath_mask,
        stenoses=tuple(stenoses), branches=tuple(branches), catheter=cath_out, params=params,
    )  # fmt: skip


# --------------------------------------------------------------------------------- files


def _readme(n: int, seed: int, size: int, n_stenoses: int) -> str:
    last = image_seed(seed, n - 1)
    return f"""# Synthetic X-ray coronary angiograms

SYNTHETIC DATA. Every image here was drawn by a procedural generator; none is a clinical image,
none shows a patient, and none may be used to judge clinical performance.

- generator: `clearscan.datasets.synth_angio` version {GENERATOR_VERSION}
- command: `clearscan datasets synth-angio --n {n} --seed {seed} --size {size}`
- images: {n}, {size} x {size} px, 8-bit grayscale, vessels dark
- seeds: image `i` was generated with seed `{seed} * {SEED_STRIDE} + i`
  (`{image_seed(seed, 0)}` to `{last}`); `generate(seed, size={size})` regenerates one alone
- stenoses: {n_stenoses} in all, listed in `stenoses.csv`

## Layout

- `images/NNNN.png`: the angiogram (8-bit grayscale).
- `masks/NNNN.png`: the vessel lumen, 0 = background, 1 = vessel (8-bit, same size): exactly
  the pixels whose centre lies inside a vessel. The catheter is not vessel.
- `stenoses.csv`: one row per imposed stenosis: `image`, `branch` (branch id in the
  generator's tree), `x`, `y` (narrowest point, px; x = column, y = row, pixel centres at
  integers), `percent_stenosis` (true percent diameter stenosis, (1 - MLD / RVD) x 100),
  `mld_px` (minimal lumen diameter), `rvd_px` (reference vessel diameter: the tapered vessel
  without the lesion at that point), `lesion_length_px` (along the centreline).

## What it is not

Not clinical images and not a substitute for them: the trees, the anatomy in the background,
the contrast, the noise and the lesions are simplified models (recursive branching with
Murray's law, cosine-shaped narrowings, path-length rendering, Poisson noise, Gaussian blur).
There is no cardiac motion, no foreshortening, no calcium, no eccentric or diffuse disease and
no vendor image processing. Scores on this data do not carry over to real angiograms.
"""


def write_dataset(
    out: Path,
    *,
    n: int,
    seed: int,
    size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, str]]:
    """Write ``n`` images, masks, ``stenoses.csv`` and ``README.md`` under ``out`` (which must
    not exist or be empty); returns the CSV rows. Image ``i`` has seed ``image_seed(seed, i)``."""
    if n < 1:
        raise Invalid("--n must be at least 1")
    if seed < 0:
        raise Invalid("--seed must be non-negative")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Invalid(f"{out} exists and is not an empty folder; choose a new one")
    if not 128 <= size <= 2048:
        raise Invalid("size must be between 128 and 2048 pixels")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    width = max(4, len(str(n - 1)))
    rows: list[dict[str, str]] = []
    for i in range(n):
        sample = generate(image_seed(seed, i), size=size)
        name = f"{i:0{width}d}.png"
        Image.fromarray(np.ascontiguousarray(sample.image)).save(out / "images" / name)
        Image.fromarray(sample.mask.astype(np.uint8)).save(out / "masks" / name)
        for st in sample.stenoses:
            rows.append(
                {
                    "image": name, "branch": str(st.branch), "x": f"{st.x:.2f}",
                    "y": f"{st.y:.2f}", "percent_stenosis": f"{st.percent_stenosis:.2f}",
                    "mld_px": f"{st.mld_px:.3f}", "rvd_px": f"{st.rvd_px:.3f}",
                    "lesion_length_px": f"{st.lesion_length_px:.2f}",
                }
            )  # fmt: skip
        if progress is not None:
            progress(i + 1)
    with (out / "stenoses.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.md").write_text(_readme(n, seed, size, len(rows)))
    return rows
