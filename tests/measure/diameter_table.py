"""Diameter error on binary tubes of known width: ``python -m tests.measure.diameter_table``."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from clearscan.measure import measure_vessels
from tests.measure import synth

WIDTHS = (3, 4, 6, 8, 10, 12, 16, 20)


def errors(width: float, *, edt: bool = False) -> dict[str, tuple[float, float]]:
    """(mean signed, max abs) error of the analysed diameters, px, per shape; ``edt``: of
    ``2 x EDT - 1`` on the same centreline points instead of the normal profiles."""
    shapes = {
        "straight 0 deg": synth.straight_tube(width)[0],
        "straight 30 deg": synth.straight_tube(width, angle_deg=30.0)[0],
        "arc R=120": synth.arc_tube(width)[0],
    }
    out = {}
    for name, mask in shapes.items():
        res = measure_vessels(mask)
        seg = max(res.segments, key=lambda s: s.length)
        if edt:
            pts = seg.points[seg.analysed]
            d = 2.0 * ndimage.distance_transform_edt(mask)[pts[:, 0], pts[:, 1]] - 1.0 - width
        else:
            d = seg.diameters[seg.analysed] - width
        out[name] = (float(np.mean(d)), float(np.max(np.abs(d))))
    return out


def main() -> None:
    names = list(errors(10))
    print(
        "width | "
        + " | ".join(f"profiles: {n}" for n in names)
        + " | "
        + " | ".join(f"2*EDT-1: {n}" for n in names)
    )
    for w in WIDTHS:
        cells = [*errors(w).values(), *errors(w, edt=True).values()]
        print(f"{w:5d} | " + " | ".join(f"{m:+.2f} / {a:.2f}" for m, a in cells))


if __name__ == "__main__":
    main()
