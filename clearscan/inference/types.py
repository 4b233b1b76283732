"""Types shared by every part of inference: the batcher, the runtimes, the explanation code and
the tasks. Only the standard library, NumPy and `clearscan.errors`: any module may import this
one without pulling in a runtime, a model format or the rest of the package."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from clearscan.errors import Unavailable, Unprocessable

__all__ = [
    "EXPLAIN_METHODS",
    "BatchOutput",
    "CamUnsupported",
    "ExplainMethod",
    "ItemOutput",
    "ModelLoadError",
    "softmax",
]


class ModelLoadError(Unavailable):
    """The package's weights cannot be loaded or contradict the manifest, or a loaded version
    cannot run (unloaded, or its runtime failed): the version cannot serve (503)."""


class CamUnsupported(ValueError):
    """The model has no activation an explanation can be computed from (for ONNX: the graph's
    head is not global-average-pool + linear; for TorchScript: no 4-D activation to split at)."""


class ExplainMethod(StrEnum):
    """How a heatmap is computed from the target activation."""

    GRADCAM = "gradcam"
    GRADCAM_PLUS_PLUS = "gradcam++"

    @classmethod
    def parse(cls, value: str) -> ExplainMethod:
        """The method named `value`; Unprocessable (422) naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise Unprocessable(f"explain_method must be one of {choices}") from None


EXPLAIN_METHODS: tuple[str, ...] = tuple(m.value for m in ExplainMethod)


@dataclass(frozen=True)
class BatchOutput:
    """What a runtime returns for one N x C x H x W batch."""

    probabilities: np.ndarray  # N x C
    top: np.ndarray  # N (class index chosen, threshold applied)
    cams: np.ndarray | None  # N x h x w in [0, 1], for the top class
    run_ms: float  # wall time of the model run for the whole batch
    ood_scores: np.ndarray | None = None  # N distances from the training inputs
    maps: np.ndarray | None = None  # segmentation: N x C x H x W class probabilities


@dataclass(frozen=True)
class ItemOutput:
    """One image's share of a batch, as the micro-batcher hands it back."""

    probabilities: np.ndarray  # C
    top: int  # class index chosen (threshold applied by the model)
    cam: np.ndarray | None  # h x w in [0, 1]; None unless asked for and the model can explain
    run_ms: float  # model run time of the whole batch this item was in
    batch_size: int  # number of items in that batch
    queue_ms: float  # time from submit() until the batch started
    ood_score: float | None = None  # distance from the training inputs (None: no reference)
    map: np.ndarray | None = None  # segmentation: C x H x W class probabilities


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C scores (numerically stable)."""
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
