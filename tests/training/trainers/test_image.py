"""The image trainer's large-split path (per-batch conversion from uint8, memory-mapped
friendly) and the 224 px ResNet-18 recipe."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from clearscan.training.trainers import image
from clearscan.training.trainers.image import ImageBatches, as_batches, to_tensor
from tests.conftest import png_bytes
from tests.training.test_training_runs import train, upload


def test_image_batches_read_the_same_values_as_the_in_memory_tensor():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(37, 12, 10, 3), dtype=np.uint8)
    full = to_tensor(x)
    lazy = ImageBatches(x)
    assert lazy.shape == tuple(full.shape) and len(lazy) == 37
    idx = torch.tensor([5, 1, 30, 2])
    assert torch.equal(lazy[idx], full[idx])
    assert torch.equal(lazy[3:9], full[3:9])
    mean, std = lazy.mean_std(chunk=7)
    assert mean == pytest.approx(float(full.double().mean()), abs=1e-6)
    assert std == pytest.approx(float(full.double().std(unbiased=False)), abs=1e-6)
    assert isinstance(as_batches(x), torch.Tensor)


def test_training_reads_a_large_split_per_batch(monkeypatch):
    monkeypatch.setattr(image, "IN_MEMORY_FLOATS", 0)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 60, size=(40, 28, 28, 1), dtype=np.uint8)
    y = np.array([0, 1] * 20)
    x[y == 1, 8:20, 8:20] += 150  # a bright square marks class 1
    assert isinstance(as_batches(x), ImageBatches)
    recipe = image.ImageRecipe(epochs=2, batch_size=16, widths=(8, 8, 8))
    trained = image.train_image_classifier(x, y, x, y, n_classes=2, recipe=recipe)
    assert trained.info["epochs_run"] == 2 and trained.val_metrics["auc"] > 0.9


def _rgb_zip(per_class: int = 8, size: int = 224) -> bytes:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "val"):
            for label, level in (("dark", 40), ("bright", 200)):
                for i in range(per_class):
                    arr = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
                    arr[60:160, 60:160] = level
                    zf.writestr(f"{split}/{label}/{i}.png", png_bytes(arr))
    return buf.getvalue()


def test_resnet18_224_recipe_trains_and_serves_with_heatmaps(client, admin_headers):
    upload(client, admin_headers, "rgb224", _rgb_zip())
    run = train(client, admin_headers, dataset="rgb224", recipe="resnet18-224", epochs=1)
    result = run["result"]
    assert result["recipe"]["name"] == "resnet18-224" and result["recipe"]["size"] == 224
    name, version = result["name"], result["version"]
    versions = client.get(f"/api/v1/models/{name}/versions", headers=admin_headers).json()
    entry = next(v for v in versions["items"] if v["version"] == version)
    assert entry["explainable"] is True and entry["runtime"] == "onnx"
    detail = client.get(f"/api/v1/models/{name}", headers=admin_headers).json()
    assert detail["input"]["height"] == 224 and detail["input"]["channels"] == 3
