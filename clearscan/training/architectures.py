"""Small ResNet-style CNN for the bundled 28x28 chest X-ray classifier.

Grad-CAM target: ``model.layer_last`` (the last residual block, output after its final ReLU,
shape N x C x 14 x 14 for a 28 x 28 input). The head is global average pooling over that
output followed by one ``nn.Linear`` (``model.fc``), so Grad-CAM for class ``k`` equals
``relu(sum_c fc.weight[k, c] * A_c) / (H * W)`` up to a positive scale: the class-weighted
activation map. Pixel normalisation (``mean``/``std`` buffers) happens inside ``forward``, so
the model and its ONNX export take raw pixels scaled to [0, 1].

This module is the only place in the package that imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "PneumoniaNet", "build_model"]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity or 1x1 projection shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PneumoniaNet(nn.Module):
    """Stem (full res) -> block (full res) -> block (/2) -> ``layer_last`` (/2) -> GAP -> fc.

    For 28 x 28 input the Grad-CAM target ``layer_last`` runs at 14 x 14. Any input size
    from about 28 to 64 px works (global pooling makes the head size-independent).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 128),
        mean: float = 0.5,
        std: float = 0.25,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError("widths must have three entries")
        w1, w2, w3 = widths
        self.register_buffer("mean", torch.tensor([[[[float(mean)]]]]))
        self.register_buffer("std", torch.tensor([[[[float(std)]]]]))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(w1, w1, stride=1)
        self.layer2 = BasicBlock(w1, w2, stride=2)
        self.layer_last = BasicBlock(w2, w3, stride=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: blocks start as identity-like.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def set_normalization(self, mean: float, std: float) -> None:
        """Set the in-graph pixel normalisation (applied to [0, 1] input)."""
        self.mean.fill_(float(mean))
        self.std.fill_(float(std))

    def features(self, x: Tensor) -> Tensor:
        """Return the Grad-CAM target activation (output of ``layer_last``)."""
        x = (x - self.mean) / self.std
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer_last(x)

    def forward(self, x: Tensor) -> Tensor:
        """Map N x C x H x W pixels in [0, 1] to N x num_classes logits."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(
    num_classes: int = 2,
    widths: Sequence[int] = (32, 64, 128),
    mean: float = 0.5,
    std: float = 0.25,
    in_channels: int = 1,
) -> PneumoniaNet:
    """Build the bundled-model architecture."""
    return PneumoniaNet(
        num_classes=num_classes, widths=widths, mean=mean, std=std, in_channels=in_channels
    )
