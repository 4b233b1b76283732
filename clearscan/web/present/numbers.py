"""How the pages write loose numbers: values read from job results and progress reports (JSON,
so any of them may be missing, a string or not finite) become the text a table cell shows."""

from __future__ import annotations

import math

DASH = "—"  # what a cell shows for a missing value


def finite(value: object) -> float | None:
    """`value` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def as_int(value: object) -> int | None:
    """`value` when it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fixed3(value: object) -> str:
    """Three decimals (`0.913`), or a dash."""
    v = finite(value)
    return DASH if v is None else f"{v:.3f}"


def duration(seconds: object) -> str:
    """`45 s`, `3 min 05 s`, `1 h 02 min` (static/training.js formats the same way)."""
    s = finite(seconds)
    if s is None or s < 0:
        return DASH
    total = round(s)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def number(value: object) -> str:
    """A column statistic: whole floats without a fraction, others to four significant digits."""
    if isinstance(value, bool) or value is None:
        return DASH if value is None else str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)
