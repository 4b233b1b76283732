"""Encode a Grad-CAM map as a small RGBA PNG at its native resolution. The browser scales it over
the image (bilinear), so no full-resolution overlay is ever encoded per request."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage


def _jet(x: np.ndarray) -> np.ndarray:
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def encode_heatmap(cam: np.ndarray) -> bytes:
    """cam: h x w in [0, 1] -> RGBA PNG; alpha rises with the value so cold regions stay clear."""
    x = np.clip(cam, 0.0, 1.0).astype(np.float32)
    rgba = np.empty((*x.shape, 4), dtype=np.uint8)
    rgba[..., :3] = (_jet(x) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = (np.clip(x * 1.25, 0, 1) * 230 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
