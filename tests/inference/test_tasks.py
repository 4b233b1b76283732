"""Inference tasks end to end on small models: image classification on the bundled ONNX package
(decode -> preprocess -> micro-batched run -> heatmap) gives what the runtime gives for the same
input; tabular classification on a hand-made scikit-learn package gives the estimator's own
probabilities and per-feature contributions. Bad input is refused with errors that name the
problem, and a task refuses a model of another kind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from PIL import Image as PILImage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from clearscan.errors import ClearScanError, Unprocessable
from clearscan.imaging import CorruptImage, Limits, decode
from clearscan.inference.base import Model
from clearscan.inference.manifest import load_manifest
from clearscan.inference.preprocess import preprocess
from clearscan.inference.runtimes import create_model
from clearscan.inference.tasks import (
    TASKS,
    ClassificationResponse,
    ImageClassificationTask,
    ImageRequest,
    IncompatibleImage,
    InferenceTask,
    InvalidFeatures,
    TabularClassificationTask,
    TabularRequest,
    TabularResponse,
    TaskKind,
    WrongTask,
    task_for,
    task_kind,
)
from clearscan.inference.types import ExplainMethod
from tests.conftest import chest_like, png_bytes

BUNDLED = Path(__file__).resolve().parents[2] / "clearscan" / "bundled_models" / "pneumonia-cxr"
FEATURES = ["age", "bmi", "smoker"]


@pytest.fixture(scope="module")
def image_model() -> Iterator[Model]:
    model = create_model(BUNDLED, load_manifest(BUNDLED))
    model.load()
    yield model
    model.close()


def _fit() -> tuple[Pipeline, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 200
    x = np.column_stack([rng.normal(50, 12, n), rng.normal(27, 4, n), rng.integers(0, 2, n)])
    z = 0.08 * (x[:, 0] - 50) + 0.3 * (x[:, 1] - 27) + 1.0 * x[:, 2]
    y = (z + rng.normal(0, 1.0, n) > 0.5).astype(int)
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(x, y)
    return est, x


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Model, Pipeline, list]]:
    est, x = _fit()
    pkg = tmp_path_factory.mktemp("tab") / "risk"
    pkg.mkdir()
    sio.dump(est, pkg / "model.skops")
    baselines = [round(float(v), 4) for v in np.median(x, axis=0)]
    manifest = {
        "schema_version": 1,
        "name": "risk",
        "version": "1.0.0",
        "runtime": "sklearn",
        "weights": "model.skops",
        "labels": ["low", "high"],
        "features": [
            {"name": n, "type": "numeric", "baseline": b}
            for n, b in zip(FEATURES, baselines, strict=True)
        ],
        "output": {"name": "probabilities", "kind": "probabilities"},
        "explain": {"method": "none"},
        "files": {"model.skops": hashlib.sha256((pkg / "model.skops").read_bytes()).hexdigest()},
    }
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    model = create_model(pkg, load_manifest(pkg))
    model.load()
    yield model, est, baselines
    model.close()


# --- image classification -------------------------------------------------------------------------


def test_image_task_equals_the_runtime_on_the_same_input(image_model):
    uploads = [png_bytes(chest_like(200, seed=1)), png_bytes(chest_like(128, seed=2))]
    task = ImageClassificationTask(image_model)
    response = task(ImageRequest(uploads=uploads, limits=Limits(), explain=True))

    assert isinstance(response, ClassificationResponse)
    assert len(response.items) == 2
    labels = image_model.manifest.labels
    for i, item in enumerate(response.items):
        # the prepared image keeps metadata only: decode again to compare
        assert item.image.pixels.size == 0 and item.image.values is None
        prep = preprocess(decode(uploads[i], limits=Limits()).pixels, image_model.manifest.image)
        direct = image_model.run(prep.tensor[None], explain=True)
        np.testing.assert_allclose(item.probabilities, direct.probabilities[0], atol=1e-5)
        assert item.top_index == int(direct.top[0]) and item.top_label == labels[item.top_index]
        assert item.box == prep.box == response.prepared.boxes[i]
        assert item.image is response.prepared.images[i]
        assert item.image.width == item.image.height == (200, 128)[i]
        assert item.heatmap_png is not None and item.heatmap_png.startswith(b"\x89PNG")
        h, w = direct.cams[0].shape
        assert PILImage.open(io.BytesIO(item.heatmap_png)).size == (w, h)
        assert item.inference_ms > 0
        assert item.ood_score is not None  # the bundled package has a reference
        np.testing.assert_array_equal(response.prepared.tensors[i], prep.tensor)


def test_image_task_steps_and_options(image_model):
    task = task_for(image_model)
    assert isinstance(task, ImageClassificationTask) and task.kind is TaskKind.IMAGE_CLASSIFICATION
    request = ImageRequest(uploads=[png_bytes(chest_like(96))], explain=False)
    prepared = task.preprocess(request)
    assert prepared.explain is False and prepared.method is ExplainMethod.GRADCAM
    plain = task.postprocess(prepared, task.run(prepared))
    assert plain.items[0].heatmap_png is None

    plus = task(dataclasses.replace(request, explain=True, method="gradcam++"))  # type: ignore[arg-type]
    grad = task(dataclasses.replace(request, explain=True))
    assert plus.items[0].heatmap_png and grad.items[0].heatmap_png
    assert plus.items[0].heatmap_png != grad.items[0].heatmap_png
    assert (
        plus.items[0].probabilities == grad.items[0].probabilities == plain.items[0].probabilities
    )

    # another run on the same prepared inputs (as a shadow version does): same answer
    again = task.run(dataclasses.replace(prepared, explain=False))
    assert int(again[0].top) == plain.items[0].top_index

    with pytest.raises(Unprocessable, match="explain_method must be one of gradcam, gradcam\\+\\+"):
        task.preprocess(dataclasses.replace(request, method="lime"))  # type: ignore[arg-type]


def test_image_task_refuses_bad_files_naming_them(image_model):
    task = ImageClassificationTask(image_model)
    good = png_bytes(chest_like(64))
    with pytest.raises(CorruptImage, match=r"^file 2: ") as exc:
        task(ImageRequest(uploads=[good, b"\x89PNG\r\n\x1a\nnot really"]))
    assert exc.value.status_code in (415, 422)
    with pytest.raises(IncompatibleImage, match=r"^file 1: image is 8x8; model pneumonia-cxr") as e:
        task(ImageRequest(uploads=[png_bytes(chest_like(8))]))
    assert e.value.status_code == 422
    with pytest.raises(ClearScanError):
        task(ImageRequest(uploads=[good], limits=Limits(max_pixels=100)))


# --- tabular classification -----------------------------------------------------------------------


def _logodds(p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(p) - math.log1p(-p)


def test_tabular_task_gives_the_estimators_answer_and_contributions(tabular):
    model, est, baselines = tabular
    task = task_for(model)
    assert isinstance(task, TabularClassificationTask)
    values = {"age": 61, "bmi": "31.5", "smoker": 1.0}
    response = task(TabularRequest(values=values))

    assert isinstance(response, TabularResponse)
    row = [61.0, 31.5, 1.0]
    p = est.predict_proba(np.array([row]))[0]
    np.testing.assert_allclose(response.probabilities, p, atol=1e-6)
    top = int(np.argmax(p))
    assert (response.top_index, response.top_label) == (top, ["low", "high"][top])
    assert [c.feature for c in response.contributions] == FEATURES
    assert [c.value for c in response.contributions] == [61, "31.5", 1.0]  # as submitted
    for i, c in enumerate(response.contributions):
        varied = list(row)
        varied[i] = baselines[i]
        q = est.predict_proba(np.array([varied]))[0]
        assert c.contribution == pytest.approx(_logodds(p[top]) - _logodds(q[top]), abs=1e-3)
    assert response.inference_ms > 0 and response.ood_score is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"age": 1, "height": 2}, "unknown feature\\(s\\) for risk:1.0.0: height"),
        ({"age": "old"}, "feature 'age' is numeric; got a value that is not a number"),
        ({"age": math.inf}, "feature 'age' must be a finite number"),
        ({"age": None, "bmi": 27, "smoker": 0}, "the model cannot predict from these values"),
    ],
)
def test_tabular_task_refuses_values_it_cannot_use(tabular, values, message):
    task = TabularClassificationTask(tabular[0])
    with pytest.raises(InvalidFeatures, match=message) as exc:
        task(TabularRequest(values=values))
    assert exc.value.status_code == 422


# --- the contract ---------------------------------------------------------------------------------


def test_a_task_refuses_a_model_of_another_kind(image_model, tabular):
    assert task_kind(image_model.manifest) is TaskKind.IMAGE_CLASSIFICATION
    assert task_kind(tabular[0].manifest) is TaskKind.TABULAR_CLASSIFICATION
    with pytest.raises(WrongTask, match="serves tabular-classification, not image-classification"):
        ImageClassificationTask(tabular[0])
    with pytest.raises(WrongTask, match="serves image-classification, not tabular-classification"):
        TabularClassificationTask(image_model)


def test_every_task_kind_has_a_task():
    assert set(TASKS) == set(TaskKind)
    for kind, cls in TASKS.items():
        assert issubclass(cls, InferenceTask) and cls.kind is kind
