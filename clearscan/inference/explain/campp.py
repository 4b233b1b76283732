"""Grad-CAM++ from the same single ONNX Runtime run as the prediction (no backward pass).

For a global-average-pool + linear head the class score is

    S_c = sum_k W[c, k] * mean_ij(A_k[i, j]) + b_c

so the gradient g_k = dS_c/dA_k[i, j] = W[c, k] / Z (Z = h*w) is the same at every position and
all higher derivatives vanish. Grad-CAM++ (Chattopadhyay et al., 2018, with the exponential of
the score) then has closed-form coefficients, constant over positions:

    alpha_k = g_k^2 / (2 g_k^2 + sum_ab A_k[a, b] * g_k^3 + eps)      (0 where g_k == 0)
    w_k     = sum_ij relu(g_k) * alpha_k = Z * relu(g_k) * alpha_k
    map     = relu(sum_k w_k * A_k)

This is exactly pytorch-grad-cam's ``GradCAMPlusPlus.get_cam_weights`` (eps = 1e-7) evaluated
with these gradients. The map is normalised by its peak to [0, 1], like
``clearscan.inference.explain.gradcam.class_activation_maps`` (a zero map stays zero).

Unlike plain Grad-CAM, the result is not just a rescaling of the class-weighted activation map:
each channel's weight is damped by its total activation (the sum_ab A_k term)."""

from __future__ import annotations

import numpy as np

from clearscan.inference.explain.gradcam import weighted_maps

EPS = 1e-7  # as in pytorch-grad-cam's GradCAMPlusPlus

__all__ = [
    "gradcam_plus_plus_from_gradients",
    "gradcam_plus_plus_maps",
    "gradcam_plus_plus_weights",
]


def gradcam_plus_plus_weights(
    activation: np.ndarray, weight: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM++ channel weights (N x K, float64) for `classes[i]` of each sample i.

    activation: N x K x h x w; weight: C x K (the linear head after global average pooling)."""
    if activation.ndim != 4:
        raise ValueError(f"activation must be N x K x h x w, got shape {list(activation.shape)}")
    n, k, h, w = activation.shape
    z = float(h * w)
    g = np.asarray(weight, dtype=np.float64)[np.asarray(classes)] / z  # N x K
    if g.shape != (n, k):
        raise ValueError(f"weight rows have {g.shape[-1]} channels, activation has {k}")
    g2 = g * g
    g3 = g2 * g
    total = activation.sum(axis=(2, 3), dtype=np.float64)  # N x K
    denom = 2.0 * g2 + total * g3 + EPS
    # channels with zero gradient get alpha 0 (as in the reference); a denominator that is
    # exactly zero (only possible for activations with negative sums) also gives 0, not inf
    alpha = np.zeros_like(g)
    np.divide(g2, denom, out=alpha, where=(g != 0) & (denom != 0))
    return z * np.maximum(g, 0.0) * alpha


def gradcam_plus_plus_maps(
    activation: np.ndarray, weight: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM++ maps (N x h x w, float32) in [0, 1] for `classes[i]` of each sample i.

    activation: N x K x h x w; weight: C x K; classes: N class indices."""
    return weighted_maps(gradcam_plus_plus_weights(activation, weight, classes), activation)


def gradcam_plus_plus_from_gradients(activation: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++ maps (N x h x w) from the gradient of each sample's class score w.r.t. its
    activation (both N x K x h x w), for heads that are not GAP + linear: the same formula as
    pytorch-grad-cam's ``GradCAMPlusPlus.get_cam_weights`` with position-dependent gradients."""
    g = gradients.astype(np.float64, copy=False)
    g2 = g * g
    g3 = g2 * g
    total = activation.sum(axis=(2, 3), dtype=np.float64)[:, :, None, None]
    denom = 2.0 * g2 + total * g3 + EPS
    alpha = np.zeros_like(g)
    np.divide(g2, denom, out=alpha, where=(g != 0) & (denom != 0))
    weights = (np.maximum(g, 0.0) * alpha).sum(axis=(2, 3))
    return weighted_maps(weights, activation)
