"""ONNX export shared by the training script and the benchmark package builder."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    channels: int,
    height: int,
    width: int,
    opset: int = 17,
    input_name: str = "image",
    output_name: str = "logits",
) -> Path:
    """Export with the legacy TorchScript exporter (``dynamo=False``: a plain graph whose head
    is GlobalAveragePool -> Flatten -> Gemm), dynamic batch axis. Returns ``path``."""
    model.eval()
    dummy = torch.rand(2, channels, height, width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}},
            do_constant_folding=True,
        )
    return path
