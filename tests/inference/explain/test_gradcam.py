"""Grad-CAM from one ONNX Runtime run equals a library's Grad-CAM (Captum's LayerGradCam)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from clearscan.inference.manifest import load_manifest  # noqa: E402
from clearscan.inference.runtimes.onnx import OnnxModel  # noqa: E402
from clearscan.training.architectures import build_model  # noqa: E402
from tests.conftest import chest_like  # noqa: E402


def _package(
    tmp: Path, model: torch.nn.Module, *, size: int = 28, dynamo: bool = False
) -> OnnxModel:
    model.eval()
    path = tmp / "model.onnx"
    dummy = torch.zeros(1, 1, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=dynamo,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes=None if dynamo else {"image": {0: "N"}, "logits": {0: "N"}},
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "name": "cam-test",
        "version": "0.1.0",
        "weights": "model.onnx",
        "labels": ["normal", "pneumonia"],
        "input": {"channels": 1, "height": size, "width": size},
        "files": {"model.onnx": digest},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    runner = OnnxModel(tmp, load_manifest(tmp))
    runner.load()
    return runner


def _captum(
    model: torch.nn.Module, layer: torch.nn.Module, x: np.ndarray, target: int
) -> np.ndarray:
    gc = captum_attr.LayerGradCam(model, layer)
    attr = gc.attribute(torch.from_numpy(x), target=target, relu_attributions=True)
    a = attr.detach().numpy()[0, 0]
    return a / a.max() if a.max() > 0 else a


def _inputs(n: int = 4) -> list[np.ndarray]:
    return [chest_like(28, seed=s)[None, None] for s in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_gradcam_matches_captum(tmp_path, seed):
    torch.manual_seed(seed)
    model = build_model()
    # perturb BN statistics so the network is not at its trivial initial state
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    runner = _package(tmp_path, model)
    assert runner.explainable, runner.cam_error
    batch = np.concatenate(_inputs())
    out = runner.run(batch, explain=True)
    assert out.cams is not None and out.cams.shape == (4, 14, 14)
    for i in range(len(batch)):
        ref = _captum(model, model.layer_last, batch[i : i + 1], int(out.top[i]))
        assert np.abs(out.cams[i] - ref).max() <= 1e-4


def test_gradcam_for_every_class_choice(tmp_path):
    """Class index matters: the map for the other class is computed with that class's weights."""
    torch.manual_seed(3)
    model = build_model()
    runner = _package(tmp_path, model)
    x = _inputs(1)[0]
    from clearscan.inference.explain.gradcam import class_activation_maps

    act = runner._session.run([runner.cam_head.target], {"image": x})[0]  # type: ignore[union-attr]
    for cls in (0, 1):
        ours = class_activation_maps(act, runner.cam_head.weight, np.array([cls]))[0]  # type: ignore[union-attr]
        assert np.abs(ours - _captum(model, model.layer_last, x, cls)).max() <= 1e-4


def test_dynamo_export_is_also_explained(tmp_path):
    """The head finder copes with the other exporter's graph (MatMul/Gemm, ReduceMean)."""
    torch.manual_seed(4)
    model = build_model()
    try:
        runner = _package(tmp_path, model, dynamo=True)
    except Exception as exc:  # exporter unavailable in this torch build
        pytest.skip(f"dynamo exporter unavailable: {exc}")
    assert runner.explainable, runner.cam_error
    x = _inputs(1)[0]
    out = runner.run(x, explain=True)
    ref = _captum(model, model.layer_last, x, int(out.top[0]))
    assert np.abs(out.cams[0] - ref).max() <= 1e-4  # type: ignore[index]


class _NotGap(torch.nn.Module):
    """Flatten + linear head (no global pooling): Grad-CAM by class weights does not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 28 * 28, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_model_without_gap_head_still_serves_without_heatmap(tmp_path):
    runner = _package(tmp_path, _NotGap())
    assert not runner.explainable and runner.cam_error
    out = runner.run(_inputs(1)[0], explain=True)
    assert out.cams is None and out.probabilities.shape == (1, 2)


def test_bundled_model_is_explainable(app):
    entry = app.state.clearscan.registry.get("pneumonia-cxr")
    assert entry.model is not None and entry.model.explainable, entry.error
    assert entry.model.cam_head.target == entry.manifest.explain.target  # type: ignore[union-attr]
