"""TorchScript runtime: a `torch.jit.save` package serves the eager model's probabilities, and its
Grad-CAM / Grad-CAM++ maps (from the forward graph split at the target activation) equal Captum's
LayerGradCam and an autograd reference of pytorch-grad-cam's GradCAMPlusPlus, also for heads that
are not GAP + linear. Bad packages fail with a clear error; `torch.save` pickles are refused at
import; a TorchScript package imports and serves through the store and the HTTP API."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from clearscan.inference.manifest import load_manifest  # noqa: E402
from clearscan.inference.runtimes import create_model  # noqa: E402
from clearscan.inference.runtimes.torchscript import TorchScriptModel  # noqa: E402
from clearscan.inference.types import ModelLoadError  # noqa: E402
from clearscan.registry.store import ImportRejected, ModelStore, OnnxFlags  # noqa: E402
from tests.conftest import chest_like, png_bytes  # noqa: E402

nn = torch.nn
EPS = 1e-7
LABELS = ["normal", "pneumonia"]


def _features() -> Any:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )


class GapNet(nn.Module):
    """conv-relu-conv-relu, global average pooling, linear: the classic Grad-CAM setting."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class FlatNet(nn.Module):
    """features -> flatten -> linear over every position: each position has its own gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.fc = nn.Linear(16 * 14 * 14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class ConvMlpNet(nn.Module):
    """features -> 1x1 conv + ReLU -> pooling -> Linear-ReLU-Linear: the ReLU after the target
    masks gradients position by position, and the MLP makes them depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.mix = nn.Sequential(nn.Conv2d(16, 12, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.mix(self.features(x))), 1))


class SpareNet(GapNet):
    """Has a submodule that forward() never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Conv2d(16, 16, 1)


def _model(cls: type, seed: int) -> Any:
    torch.manual_seed(seed)
    model = cls()
    # A positive bias on the first conv keeps most units alive, so maps are not trivially zero.
    with torch.no_grad():
        model.features[0].bias.uniform_(0.0, 0.2)
    return model.eval()


def _write_package(
    tmp: Path,
    model: Any,
    *,
    target: str | None = None,
    labels: list[str] | None = None,
    name: str = "ts-test",
    version: str = "0.1.0",
) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    weights = tmp / "model.pt"
    torch.jit.save(torch.jit.script(model), str(weights))
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "runtime": "torchscript",
        "weights": "model.pt",
        "labels": labels or LABELS,
        "input": {"channels": 1, "height": 28, "width": 28},
        "files": {"model.pt": hashlib.sha256(weights.read_bytes()).hexdigest()},
    }
    if target is not None:
        manifest["explain"] = {"target": target}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    return tmp


def _load(
    tmp: Path, model: Any, *, target: str | None = None, labels: list[str] | None = None
) -> TorchScriptModel:
    pkg = _write_package(tmp, model, target=target, labels=labels)
    runner = TorchScriptModel(pkg, load_manifest(pkg))
    runner.load()
    return runner


def _batch(seeds: range | list[int]) -> np.ndarray:
    return np.concatenate([chest_like(28, seed=s)[None, None] for s in seeds])


def _eager_probs(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def _captum(model: Any, layer: Any, x: np.ndarray, target: int) -> np.ndarray:
    gc = captum_attr.LayerGradCam(model, layer)
    attr = gc.attribute(torch.from_numpy(x), target=target, relu_attributions=True)
    a = attr.detach().numpy()[0, 0]
    return a / a.max() if a.max() > 0 else a


def _layer_grads(model: Any, layer: Any, x: np.ndarray, target: int) -> tuple[Any, Any]:
    """(activation, gradient of the class score) at `layer`, from autograd on the eager model
    (forward hook + tensor hook, as pytorch-grad-cam captures them)."""
    store: dict[str, Any] = {}

    def forward_hook(module: Any, inputs: object, output: Any) -> None:
        store["activation"] = output.detach()

        def save_grad(grad: Any) -> None:
            store["grad"] = grad.detach()

        output.register_hook(save_grad)

    handle = layer.register_forward_hook(forward_hook)
    try:
        inp = torch.from_numpy(x).requires_grad_(True)
        model.zero_grad()
        model(inp)[:, target].sum().backward()
    finally:
        handle.remove()
    return store["activation"], store["grad"]


def _gradcam_pp_reference(model: Any, layer: Any, x: np.ndarray, target: int) -> np.ndarray:
    """pytorch-grad-cam GradCAMPlusPlus (get_cam_weights + ReLU) for one image, peak-normalised."""
    acts, grads = _layer_grads(model, layer, x, target)
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


# --- probabilities and Grad-CAM for a GAP + linear head ---------------------------------------


@pytest.mark.parametrize("target", ["features", None], ids=["named-target", "auto-target"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_and_gradcam_match_eager_and_captum(tmp_path, seed, target):
    model = _model(GapNet, seed)
    runner = _load(tmp_path, model, target=target)
    assert runner.explainable, runner.cam_error
    assert runner.target == "features"
    batch = _batch(range(seed, seed + 3))
    out = runner.run(batch, explain=True)
    np.testing.assert_allclose(out.probabilities, _eager_probs(model, batch), atol=1e-5)
    np.testing.assert_array_equal(out.top, out.probabilities.argmax(axis=1))
    assert out.cams is not None and out.cams.shape == (3, 14, 14)
    for i in range(len(batch)):
        ref = _captum(model, model.features, batch[i : i + 1], int(out.top[i]))
        assert ref.max() == pytest.approx(1.0)  # a real map, not an all-zero one
        assert np.abs(out.cams[i] - ref).max() <= 1e-4


def test_unexplained_run_matches_explained_probabilities(tmp_path):
    model = _model(GapNet, 5)
    runner = _load(tmp_path, model)
    batch = _batch(range(3))
    plain = runner.run(batch, explain=False)
    assert plain.cams is None
    np.testing.assert_allclose(plain.probabilities, _eager_probs(model, batch), atol=1e-5)
    explained = runner.run(batch, explain=True)
    np.testing.assert_allclose(plain.probabilities, explained.probabilities, atol=1e-6)


# --- heads that are not GAP + linear: gradients vary by position ------------------------------


@pytest.mark.parametrize("cls", [FlatNet, ConvMlpNet])
@pytest.mark.parametrize("seed", [0, 1])
def test_non_gap_head_gradcam_and_gradcam_plus_plus_match_references(tmp_path, cls, seed):
    model = _model(cls, seed)
    runner = _load(tmp_path, model, target="features")
    assert runner.explainable, runner.cam_error
    batch = _batch(range(seed, seed + 3))
    cam = runner.run(batch, explain=True)
    campp = runner.run(batch, explain=True, method="gradcam++")
    np.testing.assert_allclose(cam.probabilities, _eager_probs(model, batch), atol=1e-5)
    np.testing.assert_allclose(campp.probabilities, cam.probabilities, atol=1e-6)
    assert cam.cams is not None and campp.cams is not None
    assert cam.cams.shape == campp.cams.shape == (3, 14, 14)
    for i in range(len(batch)):
        x, top = batch[i : i + 1], int(cam.top[i])
        _, grads = _layer_grads(model, model.features, x, top)
        # the point of this test: the gradient is not the same at every position
        assert (grads.amax(dim=(2, 3)) - grads.amin(dim=(2, 3))).abs().max() > 1e-6
        ref = _captum(model, model.features, x, top)
        assert ref.max() == pytest.approx(1.0)
        assert np.abs(cam.cams[i] - ref).max() <= 1e-4
        ref_pp = _gradcam_pp_reference(model, model.features, x, top)
        assert ref_pp.max() == pytest.approx(1.0)
        assert np.abs(campp.cams[i] - ref_pp).max() <= 1e-4
        # Grad-CAM++ is not Grad-CAM again
        assert np.abs(campp.cams[i] - cam.cams[i]).max() > 1e-3


# --- batches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_batch_equals_one_by_one(tmp_path, method):
    model = _model(ConvMlpNet, 3)
    runner = _load(tmp_path, model)
    assert runner.target == "mix"  # auto-detected: the last 4-D activation
    batch = _batch(range(10, 14))
    together = runner.run(batch, explain=True, method=method)
    assert together.cams is not None and together.cams.shape == (4, 14, 14)
    for i in range(len(batch)):
        alone = runner.run(batch[i : i + 1], explain=True, method=method)
        assert alone.cams is not None
        np.testing.assert_allclose(together.probabilities[i], alone.probabilities[0], atol=1e-5)
        assert together.top[i] == alone.top[0]
        np.testing.assert_allclose(together.cams[i], alone.cams[0], atol=1e-5)


# --- parameters -------------------------------------------------------------------------------


def test_parameters_frozen_and_no_gradients_left(tmp_path):
    runner = _load(tmp_path, _model(FlatNet, 0))
    params = list(runner._module.parameters())
    assert params and all(not p.requires_grad for p in params)
    for method in ("gradcam", "gradcam++"):
        out = runner.run(_batch(range(2)), explain=True, method=method)
        assert out.cams is not None
    assert all(p.grad is None for p in runner._module.parameters())
    assert all(not p.requires_grad for p in runner._module.parameters())


# --- targets that cannot be explained ---------------------------------------------------------


@pytest.mark.parametrize("target", ["nonexistent", "spare"])
def test_target_not_called_by_forward_serves_without_heatmap(tmp_path, target):
    model = _model(SpareNet, 0)
    runner = _load(tmp_path, model, target=target)
    assert not runner.explainable
    assert runner.cam_error and target in runner.cam_error
    assert runner.target is None
    batch = _batch(range(2))
    out = runner.run(batch, explain=True)
    assert out.cams is None
    np.testing.assert_allclose(out.probabilities, _eager_probs(model, batch), atol=1e-5)


# --- load errors ------------------------------------------------------------------------------


def test_labels_count_not_matching_output_width(tmp_path):
    with pytest.raises(ModelLoadError, match="labels"):
        _load(tmp_path, _model(GapNet, 0), labels=["a", "b", "c"])


def test_truncated_archive_is_not_loadable(tmp_path):
    pkg = _write_package(tmp_path, _model(GapNet, 0))
    weights = pkg / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["model.pt"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    runner = TorchScriptModel(pkg, load_manifest(pkg))
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript archive"):
        runner.load()


def test_wrong_sha256_is_refused(tmp_path):
    pkg = _write_package(tmp_path, _model(GapNet, 0))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["model.pt"] = "0" * 64
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    runner = TorchScriptModel(pkg, load_manifest(pkg))
    with pytest.raises(ModelLoadError, match="sha256"):
        runner.load()


# --- store import -----------------------------------------------------------------------------


def _flags(**kw: Any) -> OnnxFlags:
    base: dict[str, Any] = {
        "labels": LABELS,
        "input_size": (28, 28),
        "channels": 1,
        "name": "ts-bare",
        "version": "0.2.0",
    }
    base.update(kw)
    return OnnxFlags(**base)


def test_bare_torchscript_file_imports_and_serves(tmp_path):
    model = _model(GapNet, 7)
    src = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(model), str(src))
    store = ModelStore(tmp_path / "store")
    manifest = store.import_package(src, flags=_flags())
    assert manifest.runtime == "torchscript"
    assert (manifest.name, manifest.version) == ("ts-bare", "0.2.0")
    assert manifest.labels == LABELS
    folder = store.version_dir("ts-bare", "0.2.0")
    assert folder.is_dir()
    stored = load_manifest(folder)
    assert stored.runtime == "torchscript" and stored.weights in stored.files
    runner = create_model(folder, stored)
    assert isinstance(runner, TorchScriptModel)
    runner.load()
    try:
        assert runner.explainable and runner.target == "features", runner.cam_error
        batch = _batch(range(2))
        out = runner.run(batch, explain=True)
        np.testing.assert_allclose(out.probabilities, _eager_probs(model, batch), atol=1e-5)
        assert out.cams is not None and out.cams.shape == (2, 14, 14)
    finally:
        runner.close()


def test_bare_torchscript_file_without_labels_is_rejected(tmp_path):
    src = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_model(GapNet, 0)), str(src))
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match="--labels"):
        ModelStore(root).import_package(src, flags=_flags(labels=None))
    with pytest.raises(ImportRejected, match="--input-size"):
        ModelStore(root).import_package(src, flags=_flags(input_size=None))
    assert list(root.rglob("*")) == []


def test_torch_save_state_dict_file_is_refused(tmp_path):
    src = tmp_path / "weights.pt"
    torch.save(_model(GapNet, 0).state_dict(), src)
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match=r"torch\.save"):
        ModelStore(root).import_package(src, flags=_flags())
    assert list(root.rglob("*")) == []


@pytest.mark.parametrize("payload", ["state_dict", "module"])
def test_package_with_torch_save_weights_is_refused_and_leaves_nothing(tmp_path, payload):
    model = _model(GapNet, 0)
    pkg = _write_package(tmp_path / "pkg", model)
    weights = pkg / "model.pt"
    torch.save(model.state_dict() if payload == "state_dict" else model, weights)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["model.pt"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match=r"torch\.save"):
        ModelStore(root).import_package(pkg)
    assert list(root.rglob("*")) == []


# --- HTTP API ---------------------------------------------------------------------------------


def _package_zip(model: Any, tmp: Path, *, name: str, version: str) -> bytes:
    pkg = _write_package(tmp, model, name=name, version=version)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in ("manifest.json", "model.pt"):
            zf.write(pkg / f, f)
    return buf.getvalue()


def test_upload_torchscript_package_and_predict_with_heatmap(
    client, admin_headers, clinician_headers, tmp_path
):
    data = _package_zip(_model(GapNet, 11), tmp_path / "pkg", name="ts-http", version="0.4.0")
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": ("ts.zip", data, "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "ts-http" and r.json()["explainable"] is True
    r = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        data={"model": "ts-http", "explain": "true"},
        files=[("file", ("x.png", png_bytes(chest_like(64, seed=2)), "image/png"))],
    )
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["model"] == {"name": "ts-http", "version": "0.4.0"}
    assert p["labels"] == LABELS
    assert abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["heatmap_url"] is not None
    heat = client.get(p["heatmap_url"], headers=clinician_headers)
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"


# --- graphs that once broke the split ---------------------------------------------------------


class InplaceHeadNet(nn.Module):
    """DenseNet's pattern: the head modifies the target activation in place."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.features = _features()
        self.classifier = nn.Linear(16, 2)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        out = torch.nn.functional.relu(f, inplace=self.inplace)
        out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def test_head_that_modifies_the_activation_in_place_is_explained(tmp_path):
    model = _model(InplaceHeadNet, 0)
    runner = _load(tmp_path, model)
    assert runner.explainable and runner.target == "features", runner.cam_error
    x = _batch([3])
    out = runner.run(x, explain=True)
    reference = InplaceHeadNet(inplace=False)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    expected = _captum(reference, reference.features, x, int(out.top[0]))
    assert expected.max() > 0
    assert np.abs(out.cams[0] - expected).max() <= 1e-4


def test_named_target_without_spatial_activation_serves_without_heatmap(tmp_path):
    runner = _load(tmp_path, _model(GapNet, 0), target="fc")
    assert not runner.explainable and "fc" in (runner.cam_error or "")
    assert runner.run(_batch([0]), explain=True).cams is None


class ReusedActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.features(x))
        x = self.act(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_module_called_twice_is_split_at_its_last_call(tmp_path):
    nonzero = 0
    for seed in range(4):
        model = _model(ReusedActNet, seed)
        with torch.no_grad():
            model.conv2.bias.uniform_(0.0, 0.2)
        runner = _load(tmp_path / str(seed), model)
        assert runner.target == "act"
        x = _batch([seed])
        out = runner.run(x, explain=True)
        with torch.no_grad():
            last = model.act(model.conv2(model.act(model.features(torch.from_numpy(x)))))
        assert out.cams.shape == (1, *last.shape[2:])  # after conv2 (stride 2): the last call
        assert out.cams.shape[1] < 28 // 2
        # reference: gradient of the class score w.r.t. the output of the last call of `act`
        outputs: list[Any] = []
        handle = model.act.register_forward_hook(lambda mod, inp, o, keep=outputs: keep.append(o))
        try:
            score = model(torch.from_numpy(x))[0, int(out.top[0])]
        finally:
            handle.remove()
        acts = outputs[-1]
        (grads,) = torch.autograd.grad(score, acts)
        cam = torch.relu((grads.mean(dim=(2, 3))[:, :, None, None] * acts).sum(dim=1))
        cam = cam[0].detach().numpy()
        if cam.max() > 0:
            cam = cam / cam.max()
            nonzero += 1
        assert np.abs(out.cams[0] - cam).max() <= 1e-4
    assert nonzero >= 1
