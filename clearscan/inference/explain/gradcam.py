"""Grad-CAM maps from an activation and channel weights (NumPy only).

For a network whose head is global-average-pool followed by one linear layer, the gradient of
class score y_c w.r.t. the target activation A (K x h x w) is W[c, k] / (h*w) at every position,
so Grad-CAM's channel weights are W[c, :] / (h*w) and

    Grad-CAM_c = ReLU(sum_k W[c, k] * A_k) / (h*w)

`class_activation_maps` computes that with one small matrix product: no backward pass, no second
forward pass (the ONNX runtime exposes A as an extra output, see `onnx_head`). Other heads give
the gradient itself (`gradcam_maps_from_gradients`, from the TorchScript graph split). Every map
is normalised to [0, 1]."""

from __future__ import annotations

import numpy as np

__all__ = ["class_activation_maps", "gradcam_maps_from_gradients", "weighted_maps"]


def class_activation_maps(
    activation: np.ndarray, weight: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM maps (N x h x w) in [0, 1] for `classes[i]` of each sample i.

    activation: N x K x h x w; weight: C x K."""
    return weighted_maps(weight[classes], activation)


def weighted_maps(channel_weights: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w[n, k] * A[n, k]) per sample, normalised by its peak to [0, 1] (a zero map
    stays zero). channel_weights: N x K; activation: N x K x h x w."""
    cam = np.einsum("nk,nkhw->nhw", channel_weights, activation, optimize=True)
    np.maximum(cam, 0, out=cam)
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    peak[peak == 0] = 1.0
    cam /= peak[:, None, None]
    return cam.astype(np.float32, copy=False)


def gradcam_maps_from_gradients(activation: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) from the gradient of each sample's class score w.r.t. its
    activation (both N x K x h x w): channel weights are the spatial means of the gradient."""
    return weighted_maps(gradients.mean(axis=(2, 3)), activation)
