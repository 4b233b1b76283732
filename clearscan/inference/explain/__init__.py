"""Explanations: heatmaps for image models, per-feature contributions for tabular ones.

- `gradcam` / `campp`: Grad-CAM and Grad-CAM++ maps in NumPy, from a GAP + linear head's weights
  (one run, no backward pass) or from gradients (the TorchScript graph split).
- `onnx_head`: find that head in an ONNX graph; `torch_split`: split a TorchScript forward at
  the target activation. Each imports its framework, so import them only with their runtime.
- `heatmap`: a map as a small RGBA PNG; `contributions`: tabular per-feature contributions.

`head_maps` and `gradient_maps` pick the method's implementation."""

from __future__ import annotations

import numpy as np

from clearscan.inference.explain.campp import (
    gradcam_plus_plus_from_gradients,
    gradcam_plus_plus_maps,
)
from clearscan.inference.explain.gradcam import class_activation_maps, gradcam_maps_from_gradients
from clearscan.inference.types import ExplainMethod

__all__ = ["gradient_maps", "head_maps"]


def head_maps(
    method: str, activation: np.ndarray, weight: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Maps (N x h x w in [0, 1]) for `classes[i]` of each sample from a GAP + linear head:
    activation N x K x h x w, weight C x K."""
    if method == ExplainMethod.GRADCAM_PLUS_PLUS:
        return gradcam_plus_plus_maps(activation, weight, classes)
    return class_activation_maps(activation, weight, classes)


def gradient_maps(method: str, activation: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Maps (N x h x w in [0, 1]) from the gradient of each sample's class score w.r.t. its
    activation (both N x K x h x w)."""
    if method == ExplainMethod.GRADCAM_PLUS_PLUS:
        return gradcam_plus_plus_from_gradients(activation, gradients)
    return gradcam_maps_from_gradients(activation, gradients)
