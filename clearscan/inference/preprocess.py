"""Turn a decoded image into the model's input tensor, per the manifest's input spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from clearscan.inference.manifest import InputSpec

_RESAMPLE = {
    "bicubic": PILImage.Resampling.BICUBIC,
    "bilinear": PILImage.Resampling.BILINEAR,
    "nearest": PILImage.Resampling.NEAREST,
}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray  # C x H x W float32, normalised
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the region the model saw, in image pixels


def preprocess(pixels: np.ndarray, spec: InputSpec) -> Prepared:
    """pixels: H x W or H x W x 3 float32 in [0, 1]. MedMNIST-style: channels, centre-crop to a
    square, resize, scale to the model's value range, normalise."""
    img = pixels.astype(np.float32, copy=False)
    if spec.channels == 1 and img.ndim == 3:
        img = img @ _LUMA
    h, w = img.shape[:2]
    x0, y0, x1, y1 = 0, 0, w, h
    if spec.crop == "center_square" and h != w:
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        x1, y1 = x0 + side, y0 + side
        img = img[y0:y1, x0:x1]
    planes = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    size = (spec.width, spec.height)
    resized = [
        np.asarray(
            PILImage.fromarray(np.ascontiguousarray(p), mode="F").resize(
                size, _RESAMPLE[spec.interpolation]
            )
        )
        if p.shape != (spec.height, spec.width)
        else p
        for p in planes
    ]
    arr = np.stack(resized, axis=0)
    if spec.channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    np.clip(arr, 0.0, 1.0, out=arr)
    lo, hi = spec.value_range
    if (lo, hi) != (0.0, 1.0):
        arr = arr * (hi - lo) + lo
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    arr = (arr - mean) / std
    return Prepared(tensor=arr.astype(np.float32, copy=False), box=(x0, y0, x1, y1))
