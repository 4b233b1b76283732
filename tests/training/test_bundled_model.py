"""Tests for the shipped pneumonia-cxr model package (ONNX, manifest, metrics)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clearscan" / "bundled_models" / "pneumonia-cxr"
DATASET = (
    Path(__file__).resolve().parents[3]
    / "shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz"
)
MANIFEST_KEYS = {
    "schema_version", "name", "version", "task", "runtime", "weights", "labels", "modality",
    "dicom_modalities", "body_part", "description", "input", "output", "explain", "threshold",
    "metrics", "training", "intended_use", "limitations", "license", "model_card", "files", "ood",
}  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with mid-ranks for ties (no scikit-learn)."""
    y = y.astype(bool)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(score))
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b - 1) / 2.0 + 1.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    assert (PACKAGE / "manifest.json").is_file(), "bundled model package is missing"
    return json.loads((PACKAGE / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def session(manifest: dict[str, Any]) -> Any:
    return ort.InferenceSession(
        str(PACKAGE / manifest["weights"]), providers=["CPUExecutionProvider"]
    )


def test_package_files_exist_and_size(manifest: dict[str, Any]) -> None:
    for name in ("model.onnx", "manifest.json", "MODEL_CARD.md"):
        assert (PACKAGE / name).is_file(), name
    assert (PACKAGE / "model.onnx").stat().st_size <= 10 * 1024 * 1024


def test_manifest_schema(manifest: dict[str, Any]) -> None:
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["schema_version"] == 1
    assert manifest["name"] == "pneumonia-cxr"
    assert manifest["labels"] == ["normal", "pneumonia"]
    assert manifest["input"]["name"] == "image"
    assert manifest["input"]["mean"] == [0.0] and manifest["input"]["std"] == [1.0]
    assert manifest["output"] == {"name": "logits", "kind": "logits"}
    assert manifest["threshold"]["folded_into_bias"] is True
    assert 0.0 < manifest["threshold"]["value"] < 1.0
    assert manifest["model_card"] == "MODEL_CARD.md"
    assert "Not for clinical use" in manifest["intended_use"]


def test_file_hashes_match(manifest: dict[str, Any]) -> None:
    assert set(manifest["files"]) == {"model.onnx", "MODEL_CARD.md", "ood_reference.json"}
    for name, digest in manifest["files"].items():
        assert _sha256(PACKAGE / name) == digest, name


def test_onnx_graph_contract(manifest: dict[str, Any]) -> None:
    model = onnx.load(str(PACKAGE / "model.onnx"))
    onnx.checker.check_model(model)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    graph = model.graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    pools = [n for n in graph.node if n.op_type == "GlobalAveragePool"]
    assert len(pools) == 1
    target = manifest["explain"]["target"]
    assert pools[0].input[0] == target
    assert any(target in n.output for n in graph.node)
    gemm = [n for n in graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].output[0] == "logits"
    inits = {i.name for i in graph.initializer}
    assert gemm[0].input[1] in inits and gemm[0].input[2] in inits


def test_onnxruntime_gives_logits(session: Any) -> None:
    for n in (1, 5):
        x = np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)
        (logits,) = session.run(["logits"], {"image": x})
        assert logits.shape == (n, 2) and logits.dtype == np.float32
        assert np.isfinite(logits).all()


def test_validation_metrics_recomputed(manifest: dict[str, Any], session: Any) -> None:
    if not DATASET.is_file():
        pytest.skip(f"dataset not present: {DATASET}")
    assert _sha256(DATASET) == manifest["training"]["dataset_sha256"]
    with np.load(DATASET) as data:
        x = data["val_images"].astype(np.float32)[:, None] / 255.0
        y = data["val_labels"].astype(np.int64).ravel()
    (logits,) = session.run(["logits"], {"image": x})
    z = logits.astype(np.float64)
    prob = 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))
    pred = logits.argmax(1)
    sens = float(((pred == 1) & (y == 1)).sum() / (y == 1).sum())
    spec = float(((pred == 0) & (y == 0)).sum() / (y == 0).sum())
    stored = manifest["metrics"]["validation"]
    assert stored["n"] == len(y) == 524
    assert abs(float((pred == y).mean()) - stored["accuracy"]) < 1e-6
    assert abs(_auc(y, prob) - stored["auc"]) < 1e-4
    assert abs((sens + spec) / 2 - stored["balanced_accuracy"]) < 1e-6
    assert abs(sens - stored["sensitivity"]) < 1e-6
    assert abs(spec - stored["specificity"]) < 1e-6
