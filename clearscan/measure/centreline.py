"""Centreline of a binary vessel mask: skeleton, spur pruning, segments between nodes.

The skeleton (``skimage.morphology.skeletonize``) is split at its branch pixels (8-neighbour
count >= 3) into segments; a segment joined to a branch at one end and free at the other is a
spur, and a spur shorter than the local vessel diameter (2 x EDT at the branch) is a skeleton
artefact, removed, after which the graph is rebuilt (a few rounds, so a pruned junction merges
its two remaining segments into one). Each segment is an ordered run of (y, x) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

__all__ = ["RawSegment", "trace_segments"]

_NEIGHBOURS = np.ones((3, 3), dtype=np.uint8)
_NEIGHBOURS[1, 1] = 0
_EIGHT = np.ones((3, 3), dtype=bool)
# 4-neighbour steps first, so a walk follows the staircase instead of cutting its corners.
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
_MAX_PRUNE_ROUNDS = 6


@dataclass(frozen=True, eq=False)
class RawSegment:
    """An ordered skeleton run. ``start_node``/``end_node``: ``"end"`` (a free tip of the
    vessel) or ``"junction"`` (it touches a branch pixel); ``*_junction_diameter``: 2 x EDT at
    that branch pixel (0 for a free end)."""

    points: np.ndarray  # (N, 2) int: y, x
    start_node: str
    end_node: str
    start_junction_diameter: float
    end_junction_diameter: float


def _walk(comp: set[tuple[int, int]], start: tuple[int, int]) -> list[tuple[int, int]]:
    path = [start]
    seen = {start}
    y, x = start
    while True:
        for dy, dx in _STEPS:
            nxt = (y + dy, x + dx)
            if nxt in comp and nxt not in seen:
                break
        else:
            return path
        path.append(nxt)
        seen.add(nxt)
        y, x = nxt


def _graph(skel: np.ndarray, edt: np.ndarray) -> list[RawSegment]:
    counts = ndimage.convolve(skel.view(np.uint8), _NEIGHBOURS, mode="constant")
    junction = skel & (counts >= 3)
    body = skel & ~junction
    labels, n = ndimage.label(body, structure=_EIGHT)
    if n == 0:
        return []
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")
    ys, xs, lab = ys[order], xs[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(1, n + 2))
    # Neighbour count inside the body only, to find each run's two tips.
    body_counts = ndimage.convolve(body.view(np.uint8), _NEIGHBOURS, mode="constant")
    jy, jx = np.nonzero(junction)
    junctions = set(zip(jy.tolist(), jx.tolist(), strict=True))
    segments = []
    for i in range(n):
        sy = ys[bounds[i] : bounds[i + 1]]
        sx = xs[bounds[i] : bounds[i + 1]]
        comp = set(zip(sy.tolist(), sx.tolist(), strict=True))
        tips = np.nonzero(body_counts[sy, sx] <= 1)[0]
        start = (int(sy[tips[0]]), int(sx[tips[0]])) if tips.size else (int(sy[0]), int(sx[0]))
        path = _walk(comp, start)
        ends = []
        for y, x in (path[0], path[-1]):
            hit = [(y + dy, x + dx) for dy, dx in _STEPS if (y + dy, x + dx) in junctions]
            if hit:
                ends.append(("junction", max(2.0 * float(edt[p]) for p in hit)))
            else:
                ends.append(("end", 0.0))
        if len(path) == 1 and ends[0][0] == "junction":
            # A one-pixel run between two branch pixels: both of its ends are the same pixel.
            ends[1] = ends[0]
        segments.append(
            RawSegment(
                points=np.asarray(path, dtype=np.int64).reshape(-1, 2),
                start_node=ends[0][0],
                end_node=ends[1][0],
                start_junction_diameter=ends[0][1],
                end_junction_diameter=ends[1][1],
            )
        )
    return segments


def _is_spur(seg: RawSegment) -> bool:
    nodes = (seg.start_node, seg.end_node)
    if nodes.count("junction") != 1:
        return False
    diameter = max(seg.start_junction_diameter, seg.end_junction_diameter)
    return len(seg.points) < diameter


def trace_segments(mask: np.ndarray, edt: np.ndarray) -> tuple[np.ndarray, list[RawSegment]]:
    """The pruned skeleton of ``mask`` and its segments (``edt``: the mask's distance map)."""
    skel = skeletonize(mask)
    segments = _graph(skel, edt)
    for _ in range(_MAX_PRUNE_ROUNDS):
        spurs = [s for s in segments if _is_spur(s)]
        if not spurs:
            break
        for s in spurs:
            skel[s.points[:, 0], s.points[:, 1]] = False
        segments = _graph(skel, edt)
    return skel, segments
