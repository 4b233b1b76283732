"""Measurements on segmentation masks: quantitative coronary angiography (QCA).

Imports only numpy, scipy, scikit-image, the standard library and :mod:`clearscan.errors`.
"""

from __future__ import annotations

from clearscan.measure.qca import (
    DIAMETER_METHOD,
    InvalidMask,
    Lesion,
    QcaResult,
    Segment,
    measure_vessels,
)

__all__ = ["DIAMETER_METHOD", "InvalidMask", "Lesion", "QcaResult", "Segment", "measure_vessels"]
