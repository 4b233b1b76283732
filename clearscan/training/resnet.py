"""ResNet-18/50 in torchvision's layout, for models bigger than the bundled one (and benchmarks).

The module tree and ``state_dict`` keys match ``torchvision.models.resnet18/resnet50``
(``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layer4``, ``avgpool``, ``fc``; blocks
with ``conv1..3``, ``bn1..3``, ``downsample``), so torchvision checkpoints load with
``load_state_dict`` (for ``in_channels=3``). Bottleneck blocks put the stride on the 3x3
convolution (ResNet v1.5, as torchvision does).

Grad-CAM target: ``model.layer4`` (N x 512*expansion x H/32 x W/32). The head is global average
pooling (``avgpool``) followed by one ``nn.Linear`` (``fc``), which ONNX export turns into
GlobalAveragePool -> Flatten -> Gemm: the shape that
`clearscan.inference.explain.onnx_head.find_cam_head` finds, so Grad-CAM comes out of the same
ONNX Runtime run as the prediction. Inputs are expected
already normalised (the manifest's ``mean``/``std``); no normalisation happens in the graph.

This module (with ``architectures``) is the only place in the package that imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from clearscan.training.export import export_onnx as _export

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "export_onnx", "resnet18", "resnet50"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN; identity or 1x1-conv + BN ``downsample`` shortcut; ReLU after the add."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), each with BN; ReLU after add."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four stages (/1, /2, /2, /2), GAP, one Linear head."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError("layers must have four entries (blocks per stage)")
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be >= 1")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self._in_ch = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.feature_channels = 512 * block.expansion

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero: blocks start as identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        out_ch = planes * block.expansion
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                _conv1x1(self._in_ch, out_ch, stride), nn.BatchNorm2d(out_ch)
            )
        layers: list[nn.Module] = [block(self._in_ch, planes, stride, downsample)]
        self._in_ch = out_ch
        layers += [block(self._in_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """Return the Grad-CAM target activation (output of ``layer4``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        """Map N x in_channels x H x W (normalised) to N x num_classes logits."""
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet18(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2], 512-channel ``layer4``."""
    return ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        in_channels=in_channels,
        zero_init_residual=zero_init_residual,
    )


def resnet50(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 2048-channel ``layer4``."""
    return ResNet(
        Bottleneck,
        [3, 4, 6, 3],
        num_classes=num_classes,
        in_channels=in_channels,
        zero_init_residual=zero_init_residual,
    )


def export_onnx(
    model: ResNet,
    path: Path,
    *,
    height: int,
    width: int,
    opset: int = 17,
    input_name: str = "image",
    output_name: str = "logits",
) -> Path:
    """Export a ResNet (see ``clearscan.training.export.export_onnx``). Returns ``path``."""
    return _export(
        model,
        path,
        channels=model.in_channels,
        height=height,
        width=width,
        opset=opset,
        input_name=input_name,
        output_name=output_name,
    )


class NormalizedResNet(nn.Module):
    """A ResNet with the pixel normalisation inside the graph (input in [0, 1]), like
    PneumoniaNet: the training studio's 224 px recipe. Exposes ``features`` and ``fc``."""

    mean: Tensor
    std: Tensor

    def __init__(self, net: ResNet, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([[[[float(mean)]]]]))
        self.register_buffer("std", torch.tensor([[[[float(std)]]]]))

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    def features(self, x: Tensor) -> Tensor:
        return self.net.features((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.fc(torch.flatten(self.net.avgpool(self.features(x)), 1))
