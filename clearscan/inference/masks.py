"""Segmentation post-processing, shared by the segmentation task: class probabilities resampled
onto the image's grid, decided per pixel under the manifest's rule, cleaned of small components,
encoded as a label-map PNG, and measured (vessel QCA)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from clearscan.imaging.spacing import PixelSpacing
from clearscan.inference.manifest import ModelManifest, SegmentationSpec

__all__ = ["decide", "encode_label_map", "resample", "vessel_qca"]


def vessel_qca(
    label_map: np.ndarray, spacing: PixelSpacing | None, spec: SegmentationSpec
) -> dict[str, Any]:
    """Quantitative coronary angiography of every class but the background taken as vessel
    (clearscan.measure): in mm when the pixels are square with a known size, else in pixels,
    saying why."""
    from clearscan.measure import measure_vessels

    t0 = time.perf_counter()
    note = None
    spacing_mm = None
    if spacing is not None and spacing.isotropic:
        spacing_mm = (spacing.row_mm + spacing.col_mm) / 2
    elif spacing is not None:
        note = (
            f"the pixels are not square ({spacing.row_mm:g} x {spacing.col_mm:g} mm): "
            "figures are in pixels"
        )
    else:
        note = "the image has no pixel spacing: figures are in pixels"
    result = measure_vessels(
        label_map > 0, spacing_mm=spacing_mm, threshold_percent=spec.stenosis_threshold_percent
    ).to_json()
    if note:
        result["unit_note"] = note
    result["ms"] = round((time.perf_counter() - t0) * 1000, 3)
    return result


def resample(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w probabilities resampled (bilinear, pixel centres aligned) to C x H x W."""
    from PIL import Image as PILImage

    height, width = size
    if probs.shape[1:] == (height, width):
        return probs
    planes = [
        np.asarray(
            PILImage.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F").resize(
                (width, height), PILImage.Resampling.BILINEAR
            )
        )
        for p in probs
    ]
    return np.stack(planes)


def decide(probs: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """Per-pixel class (uint8) of C x H x W probabilities under the manifest's rule, cleaned."""
    spec = manifest.segmentation
    assert spec is not None  # the manifest's validation sets it for segmentation models
    if spec.decision == "argmax":
        decided = probs.argmax(axis=0).astype(np.uint8)
    else:
        fg = probs[1:].copy()
        for i, label in enumerate(manifest.labels[1:]):
            fg[i][fg[i] < spec.thresholds[label]] = -1.0
        best = fg.argmax(axis=0)
        decided = np.where(fg.max(axis=0) >= 0.0, best + 1, 0).astype(np.uint8)
    if spec.min_component_px or spec.keep_largest:
        decided = _clean(decided, len(manifest.labels), spec.min_component_px, spec.keep_largest)
    return decided


def _clean(decided: np.ndarray, n_labels: int, min_px: int, keep: int | None) -> np.ndarray:
    """Drop the 8-connected components of each class smaller than `min_px`, and all but the
    `keep` largest; what is dropped becomes background."""
    from scipy import ndimage

    out = decided.copy()
    structure = np.ones((3, 3), bool)
    for c in range(1, n_labels):
        comps, n = ndimage.label(decided == c, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        drop = sizes < min_px
        if keep is not None and n > keep:
            order = np.argsort(-sizes, kind="stable")
            drop[order[keep:]] = True
        if drop.any():
            out[np.isin(comps, np.flatnonzero(drop) + 1)] = 0
    return out


def encode_label_map(label_map: np.ndarray) -> bytes:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(label_map, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
