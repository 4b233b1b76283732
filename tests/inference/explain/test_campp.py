"""Grad-CAM++ from one ONNX Runtime run equals the reference Grad-CAM++ computed with autograd.

The reference is pytorch-grad-cam's ``GradCAMPlusPlus`` (``get_cam_weights`` + ReLU), written
out here in torch because that package needs torchvision: gradients of the class score w.r.t. the
``layer_last`` output are captured with a forward hook + tensor hook, as pytorch-grad-cam does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from clearscan.inference.explain.campp import (  # noqa: E402
    gradcam_plus_plus_maps,
    gradcam_plus_plus_weights,
)
from clearscan.inference.explain.gradcam import class_activation_maps  # noqa: E402
from clearscan.inference.explain.onnx_head import expose_output, find_cam_head  # noqa: E402
from clearscan.training.architectures import build_model  # noqa: E402
from tests.conftest import chest_like  # noqa: E402

EPS = 1e-7


def _reference(model: Any, x: np.ndarray, target: int) -> np.ndarray:
    """pytorch-grad-cam GradCAMPlusPlus for one image, normalised by its peak."""
    store: dict[str, Any] = {}

    def forward_hook(module: Any, inputs: object, output: Any) -> None:
        store["activation"] = output.detach()

        def save_grad(grad: Any) -> None:
            store["grad"] = grad.detach()

        output.register_hook(save_grad)

    handle = model.layer_last.register_forward_hook(forward_hook)
    try:
        inp = torch.from_numpy(x).requires_grad_(True)
        model.zero_grad()
        logits = model(inp)
        logits[:, target].sum().backward()
    finally:
        handle.remove()
    grads, acts = store["grad"], store["activation"]
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = acts.sum(dim=(2, 3))
    aij = grads_power_2 / (
        2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3 + EPS
    )
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (torch.clamp(grads, min=0) * aij).sum(dim=(2, 3))
    cam = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))[0].numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def _session(tmp: Path, model: Any) -> tuple[Any, np.ndarray, str]:
    model.eval()
    path = tmp / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
    )
    proto = onnx.load_model(str(path))
    head = find_cam_head(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        expose_output(proto, head.target).SerializeToString(),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
    )
    return sess, head.weight, head.target


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_gradcam_plus_plus_matches_autograd_reference(tmp_path, seed):
    torch.manual_seed(seed)
    model = build_model()
    # move the network off its trivial initial state (BN stats; residual branches not zeroed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    sess, weight, target = _session(tmp_path, model)
    batch = np.concatenate([chest_like(28, seed=s)[None, None] for s in range(3)])
    logits, act = sess.run(["logits", target], {"image": batch})
    assert act.shape == (3, 128, 14, 14)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(batch)).numpy(), atol=1e-4)
    for cls in (0, 1):
        classes = np.full(len(batch), cls)
        ours = gradcam_plus_plus_maps(act, weight, classes)
        assert ours.shape == (3, 14, 14) and ours.dtype == np.float32
        assert np.isfinite(ours).all() and ours.min() >= 0 and ours.max() <= 1
        gradcam = class_activation_maps(act, weight, classes)
        for i in range(len(batch)):
            ref = _reference(model, batch[i : i + 1], cls)
            assert np.abs(ours[i] - ref).max() <= 1e-4
            assert ours[i].max() == pytest.approx(1.0)
            # Grad-CAM++ is not a rescaled Grad-CAM (channel weights are re-weighted)
            assert np.abs(ours[i] - gradcam[i]).max() > 1e-3


def test_zero_and_negative_class_weights_give_no_nan():
    rng = np.random.default_rng(0)
    act = rng.random((2, 4, 3, 3), dtype=np.float32)
    act[:, 2] = 0.0  # a dead channel
    weight = np.array(
        [
            [0.0, 0.5, 0.3, -0.2],  # zero, positive, positive-on-dead-channel, negative
            [-1.0, -0.5, 0.0, -0.1],  # nothing positive: the map is all zeros
        ],
        dtype=np.float32,
    )
    maps = gradcam_plus_plus_maps(act, weight, np.array([0, 1]))
    assert np.isfinite(maps).all()
    assert maps[0].max() == pytest.approx(1.0) and maps[0].min() >= 0
    assert not maps[1].any()
    # only channel 1 contributes to class 0 (channel 0: zero weight, 2: dead, 3: negative)
    np.testing.assert_allclose(maps[0], act[0, 1] / act[0, 1].max(), atol=1e-6)
    # all-zero activation: zero map, no NaN
    zero = gradcam_plus_plus_maps(np.zeros((1, 4, 3, 3), np.float32), weight, np.array([0]))
    assert np.isfinite(zero).all() and not zero.any()


def test_denominator_exactly_zero_gives_zero_weight_not_inf():
    """With negative activation sums 2 g^2 + S g^3 + eps can vanish; the channel then drops out.

    Built exactly in binary floating point: 1 x 1 map (g = W), g = 2^-20, S = -(eps + 2g^2)/g^3."""
    g = 2.0**-20
    s = -(EPS + 2 * g * g) / g**3
    assert 2 * g * g + s * g**3 + EPS == 0.0
    act = np.full((1, 2, 1, 1), s)
    act[0, 1] = 1.0  # a normal channel beside it
    weight = np.array([[g, 0.5]])
    w = gradcam_plus_plus_weights(act, weight, np.array([0]))
    assert np.isfinite(w).all() and w[0, 0] == 0.0 and w[0, 1] > 0
    assert np.isfinite(gradcam_plus_plus_maps(act, weight, np.array([0]))).all()
