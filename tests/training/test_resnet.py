"""Tests for the torchvision-layout ResNets (shapes, GAP + Linear head, explainable ONNX export)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from clearscan.inference.manifest import load_manifest  # noqa: E402
from clearscan.inference.runtimes.onnx import OnnxModel  # noqa: E402
from clearscan.training.resnet import (  # noqa: E402
    BasicBlock,
    Bottleneck,
    ResNet,
    export_onnx,
    resnet18,
    resnet50,
)


@pytest.fixture(scope="module")
def r18() -> ResNet:
    torch.manual_seed(0)
    return resnet18(num_classes=3, in_channels=1).eval()


@pytest.mark.parametrize(("size", "fmap"), [(32, 1), (64, 2), (96, 3)])
def test_resnet18_shapes(r18: ResNet, size: int, fmap: int) -> None:
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        assert r18(x).shape == (2, 3)
        assert r18.features(x).shape == (2, 512, fmap, fmap)


def test_resnet18_layout_matches_torchvision(r18: ResNet) -> None:
    assert [n for n, _ in r18.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert [len(getattr(r18, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert all(isinstance(b, BasicBlock) for b in r18.layer1)
    keys = r18.state_dict().keys()
    assert len(keys) == 122  # torchvision resnet18's state_dict
    assert {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var"} <= set(keys)
    assert r18.conv1.in_channels == 1
    # same parameter count as torchvision's resnet18 apart from the first conv and the head
    n = sum(p.numel() for p in r18.parameters())
    assert n == 11_689_512 - 64 * 2 * 49 - 997 * 513


def test_resnet50_structure() -> None:
    m = resnet50(num_classes=2)
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert all(isinstance(b, Bottleneck) for b in m.layer4)
    assert m.fc.in_features == 2048 and m.fc.out_features == 2
    assert sum(p.numel() for p in m.parameters()) == 25_557_032 - 998 * 2049


def test_head_is_gap_plus_single_linear(r18: ResNet) -> None:
    assert [type(m) for m in r18.children()][-2:] == [nn.AdaptiveAvgPool2d, nn.Linear]
    assert [m for m in r18.modules() if isinstance(m, nn.Linear)] == [r18.fc]
    assert not any(isinstance(m, nn.Dropout) for m in r18.modules())
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        expected = r18.fc(r18.features(x).mean(dim=(2, 3)))
        assert torch.allclose(r18(x), expected, atol=1e-4, rtol=1e-4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="four"):
        ResNet(BasicBlock, [2, 2, 2])
    with pytest.raises(ValueError, match="num_classes"):
        resnet18(num_classes=0)


def test_zero_init_residual_makes_blocks_identity_like() -> None:
    m = resnet18(zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in m.layer1)


def test_onnx_export_is_explainable(r18: ResNet, tmp_path: Path) -> None:
    size = 64
    onnx_path = export_onnx(r18, tmp_path / "model.onnx", height=size, width=size)
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest = {
        "name": "r18-test",
        "version": "0.1.0",
        "weights": "model.onnx",
        "labels": ["a", "b", "c"],
        "input": {"name": "image", "channels": 1, "height": size, "width": size},
        "explain": {"method": "gradcam"},
        "files": {"model.onnx": digest},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = OnnxModel(tmp_path, load_manifest(tmp_path), threads=1)
    model.load()
    assert model.explainable, model.cam_error
    assert model.cam_head is not None and model.cam_head.weight.shape == (3, 512)

    x = np.random.default_rng(1).random((2, 1, size, size), dtype=np.float32)
    out = model.run(x, explain=True)
    assert out.cams is not None and out.cams.shape == (2, 2, 2)
    assert float(out.cams.min()) >= 0.0 and float(out.cams.max()) <= 1.0
    with torch.no_grad():
        expected = torch.softmax(r18(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(out.probabilities, expected, atol=1e-4)
    assert model.run(x, explain=False).cams is None
