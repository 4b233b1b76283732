"""Segmentation models (task: segmentation): a hand-made ONNX graph whose vessel score is the
image's darkness, so the right label map is known. The map comes back at the image's own
resolution, aligned pixel for pixel (non-square images, a model grid smaller than the image),
decided by argmax or per-class thresholds, cleaned of small components, with areas in pixels and,
where the image has a pixel spacing, in mm2. Manifests and graphs that contradict each other are
refused."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image as PILImage

from clearscan.inference.base import Model
from clearscan.inference.manifest import ManifestError, ModelManifest, load_manifest
from clearscan.inference.runtimes import create_model
from clearscan.inference.tasks import (
    ImageRequest,
    ImageSegmentationTask,
    SegmentationResponse,
    TaskKind,
    task_for,
    task_kind,
)
from clearscan.inference.types import ModelLoadError
from tests.conftest import dicom_bytes

SIDE = 64


def dark_vessel_graph(side: int = SIDE, channels_out: int = 2, gain: float = 20.0) -> bytes:
    """logits = [gain * (x - 0.5), gain * (0.5 - x)]: background where bright, vessel where
    dark (x is the normalised image in [0, 1])."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, side, side])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", channels_out, side, side])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    g = helper.make_tensor("gain", TensorProto.FLOAT, [], [gain])
    nodes = [
        helper.make_node("Sub", ["image", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["bg"]),
        helper.make_node("Neg", ["bg"], ["fg"]),
        helper.make_node("Concat", ["bg", "fg"] + ["fg"] * (channels_out - 2), ["logits"], axis=1),
    ]
    graph = helper.make_graph(nodes, "dark-vessels", [x], [y], initializer=[half, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_package(root: Path, graph: bytes, **manifest: Any) -> Path:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "model.onnx").write_bytes(graph)
    base: dict[str, Any] = {
        "schema_version": 1,
        "name": "vessels",
        "version": "1.0.0",
        "task": "segmentation",
        "weights": "model.onnx",
        "labels": ["background", "vessel"],
        "input": {"height": SIDE, "width": SIDE, "crop": "none", "interpolation": "bilinear"},
        "explain": {"method": "none"},
        "files": {"model.onnx": hashlib.sha256(graph).hexdigest()},
    }
    base.update(manifest)
    (pkg / "manifest.json").write_text(json.dumps(base))
    return pkg


@pytest.fixture
def make_model(tmp_path: Path) -> Iterator[Callable[..., Model]]:
    made: list[Model] = []

    def make(graph: bytes | None = None, **manifest: Any) -> Model:
        pkg = write_package(tmp_path / str(len(made)), graph or dark_vessel_graph(), **manifest)
        model = create_model(pkg, load_manifest(pkg))
        model.load()
        made.append(model)
        return model

    yield make
    for m in made:
        m.close()


def picture(h: int, w: int, vessels: list[tuple[slice, slice]]) -> np.ndarray:
    """A bright image with dark rectangles (the vessels)."""
    img = np.full((h, w), 220, np.uint8)
    for ys, xs in vessels:
        img[ys, xs] = 20
    return img


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def segment(model: Model, *uploads: bytes) -> SegmentationResponse:
    task = task_for(model)
    assert isinstance(task, ImageSegmentationTask)
    return task(ImageRequest(uploads=list(uploads)))


def test_the_label_map_is_at_the_images_resolution_and_aligned(make_model):
    model = make_model()
    assert task_kind(model.manifest) is TaskKind.IMAGE_SEGMENTATION
    # 200 x 130 (not square, not the model's 64 x 64): the map must still line up
    truth = picture(130, 200, [(slice(40, 70), slice(10, 190)), (slice(0, 130), slice(150, 170))])
    (item,) = segment(model, png(truth)).items
    assert item.label_map.shape == (130, 200) and item.label_map.dtype == np.uint8
    expected = (truth < 128).astype(np.uint8)
    disagree = item.label_map != expected
    # resampling through the 64 x 64 grid may move an edge by a pixel or two, never more
    edges = np.zeros_like(disagree)
    from scipy import ndimage

    edges = ndimage.binary_dilation(expected, iterations=3) & ~ndimage.binary_erosion(
        expected, iterations=3
    )
    assert not (disagree & ~edges).any()
    assert disagree.mean() < 0.03
    assert item.area_px["vessel"] == int(item.label_map.sum())
    assert item.area_mm2 is None  # a PNG has no pixel spacing
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(item.mask_png))), item.label_map)
    assert item.box == (0, 0, 200, 130) and not item.empty


def test_no_vessel_is_an_empty_map_not_an_error(make_model):
    (item,) = segment(make_model(), png(np.full((80, 80), 230, np.uint8))).items
    assert item.empty and item.area_px == {"vessel": 0} and not item.label_map.any()


def test_dicom_spacing_gives_areas_in_mm2(make_model):
    dark = picture(96, 96, [(slice(30, 60), slice(20, 80))]) < 128
    raw = dicom_bytes(np.where(dark, 0.1, 0.9), PixelSpacing=[0.2, 0.5])
    (item,) = segment(make_model(), raw).items
    assert item.image.spacing is not None
    assert item.area_mm2 == {"vessel": round(item.area_px["vessel"] * 0.1, 4)}
    assert abs(item.area_px["vessel"] - 30 * 60) < 0.1 * 30 * 60


def test_small_components_and_all_but_the_largest_are_dropped(make_model):
    img = picture(
        128,
        128,
        [
            (slice(10, 40), slice(10, 100)),
            (slice(60, 64), slice(60, 64)),
            (slice(80, 100), slice(10, 40)),
        ],
    )
    everything = segment(make_model(), png(img)).items[0]
    assert everything.area_px["vessel"] > 30 * 90 + 20 * 30
    small = make_model(segmentation={"min_component_px": 50}).manifest
    (cleaned,) = segment(make_model(segmentation={"min_component_px": 50}), png(img)).items
    assert small.segmentation is not None and not cleaned.label_map[60:64, 60:64].any()
    assert cleaned.label_map[20, 50] == 1 and cleaned.label_map[90, 20] == 1
    (largest,) = segment(make_model(segmentation={"keep_largest": 1}), png(img)).items
    assert largest.label_map[20, 50] == 1 and not largest.label_map[90, 20]


def test_threshold_decision_per_class(make_model):
    # three classes, vessel and catheter scored alike: the thresholds decide
    graph = dark_vessel_graph(channels_out=3)
    img = picture(64, 64, [(slice(20, 40), slice(5, 60))])
    model = make_model(
        graph,
        labels=["background", "vessel", "catheter"],
        segmentation={"decision": "threshold", "thresholds": {"vessel": 0.3, "catheter": 0.99}},
    )
    (item,) = segment(model, png(img)).items
    # softmax over [bg, fg, fg] gives each foreground class about 0.5 on dark pixels: over the
    # vessel's threshold, under the catheter's
    assert item.area_px["catheter"] == 0 and item.area_px["vessel"] > 0
    assert set(np.unique(item.label_map)) <= {0, 1}


def test_images_of_one_request_share_model_runs(make_model):
    model = make_model()
    a = png(picture(64, 64, [(slice(0, 10), slice(0, 64))]))
    b = png(picture(100, 50, [(slice(0, 100), slice(0, 5))]))
    items = segment(model, a, b).items
    assert [i.label_map.shape for i in items] == [(64, 64), (100, 50)]
    assert items[0].batch_size == 2


def test_an_output_that_contradicts_the_manifest_is_refused_at_load(tmp_path):
    pkg = write_package(tmp_path, dark_vessel_graph(channels_out=3))  # 3 maps, 2 labels
    model = create_model(pkg, load_manifest(pkg))
    with pytest.raises(ModelLoadError, match=r"outputs \[N, 2, H, W\]"):
        model.load()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"labels": ["vessel"]}, "background and at least one class"),
        ({"input": None, "features": [{"name": "a"}], "runtime": "sklearn"}, "take images"),
        ({"segmentation": {"decision": "threshold"}}, "needs one for vessel"),
        ({"segmentation": {"thresholds": {"artery": 0.5}}}, "artery"),
        ({"segmentation": {"thresholds": {"vessel": 1.5}}}, "between 0 and 1"),
        ({"task": "classification", "segmentation": {}}, "only segmentation models"),
        ({"threshold": {"label": "vessel", "value": 0.5}}, "decides per pixel"),
    ],
)
def test_manifests_that_contradict_themselves_are_refused(tmp_path, change, words):
    pkg = write_package(tmp_path, dark_vessel_graph(), **change)
    with pytest.raises(ManifestError, match=words):
        load_manifest(pkg)


def test_a_segmentation_manifest_gets_the_default_rules():
    m = ModelManifest.model_validate(
        {
            "name": "v",
            "version": "1.0.0",
            "task": "segmentation",
            "weights": "w.onnx",
            "labels": ["background", "vessel"],
            "input": {"height": 8, "width": 8},
            "files": {"w.onnx": "0" * 64},
        }
    )
    assert m.segmentation is not None and m.segmentation.decision == "argmax"


def test_torchscript_segmentation_gives_the_same_map(make_model, tmp_path):
    torch = pytest.importorskip("torch")

    class DarkVessels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bg = 20.0 * (x - 0.5)
            return torch.cat([bg, -bg], dim=1)

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(DarkVessels()), str(path))
    data = path.read_bytes()
    pkg = write_package(
        tmp_path / "ts",
        data,
        runtime="torchscript",
        weights="model.pt",
        files={"model.pt": hashlib.sha256(data).hexdigest()},
    )
    (pkg / "model.onnx").rename(pkg / "model.pt")
    ts_model = create_model(pkg, load_manifest(pkg))
    ts_model.load()
    try:
        img = png(picture(90, 70, [(slice(20, 50), slice(10, 60))]))
        (ts,) = segment(ts_model, img).items
        (ox,) = segment(make_model(), img).items
        assert np.array_equal(ts.label_map, ox.label_map) and ts.area_px == ox.area_px
    finally:
        ts_model.close()
