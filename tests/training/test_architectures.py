"""Tests for the bundled-model architecture (shapes, GAP + Linear head, in-model normalisation)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from clearscan.training.architectures import PneumoniaNet, build_model  # noqa: E402


@pytest.fixture()
def model() -> PneumoniaNet:
    torch.manual_seed(0)
    return build_model(widths=(8, 16, 32)).eval()


@pytest.mark.parametrize("size", [28, 32, 64])
def test_output_shapes(model: PneumoniaNet, size: int) -> None:
    x = torch.rand(3, 1, size, size)
    assert model(x).shape == (3, 2)
    feat = model.features(x)
    assert feat.shape == (3, 32, size // 2, size // 2)


def test_last_block_is_14x14_at_28px(model: PneumoniaNet) -> None:
    assert model.features(torch.rand(1, 1, 28, 28)).shape[-2:] == (14, 14)


def test_head_is_gap_plus_single_linear(model: PneumoniaNet) -> None:
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert isinstance(model.fc, nn.Linear)
    assert [type(m) for m in model.children()][-2:] == [nn.AdaptiveAvgPool2d, nn.Linear]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [model.fc]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        feat = model.layer_last(model.layer2(model.layer1(model.stem((x - 0.5) / 0.25))))
        expected = model.fc(feat.mean(dim=(2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_gradcam_equals_class_weighted_activation_map(model: PneumoniaNet) -> None:
    x = torch.rand(1, 1, 28, 28)
    feat = model.features(x).detach().requires_grad_(True)
    score = model.fc(model.pool(feat).flatten(1))[0, 1]
    (grad,) = torch.autograd.grad(score, feat)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feat).sum(1))
    cam_direct = torch.relu((model.fc.weight[1][None, :, None, None] * feat).sum(1)) / (14 * 14)
    assert torch.allclose(cam, cam_direct.detach(), atol=1e-6)


def test_normalisation_is_inside_the_model() -> None:
    torch.manual_seed(0)
    model = build_model(widths=(8, 16, 32), mean=0.3, std=0.2).eval()
    buffers = dict(model.named_buffers())
    assert float(buffers["mean"]) == pytest.approx(0.3)
    assert float(buffers["std"]) == pytest.approx(0.2)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        model.set_normalization(0.5, 0.25)
        after = model(x)
        shifted = model(x * (0.25 / 0.2) + (0.5 - 0.3 * 0.25 / 0.2))
    assert not torch.allclose(before, after)
    assert torch.allclose(before, shifted, atol=1e-4)
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_rejects_bad_widths() -> None:
    with pytest.raises(ValueError):
        build_model(widths=(8, 16))
