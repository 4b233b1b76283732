"""Inference tasks: what one kind of model does with a request, from the raw input to a typed
result. A task owns the three steps of an analysis:

    preprocess(request)           -> prepared   decode, check and shape the model's input
    run(prepared)                 -> output     the model version's runtime (micro-batched)
    postprocess(prepared, output) -> response   pick the label, round, encode the explanation

and ``task(request)`` chains them. Each step is public so that a caller can repeat one: a shadow
version runs `run` on the inputs the served version prepared, without decoding them again.

The kind of task follows from the manifest (`task_kind`): image classification and tabular
classification today. A new kind (segmentation: masks instead of class probabilities) is one more
`TaskKind`, one subclass (an image task reuses `ImageTask.preprocess`) and one line in `TASKS`.

Requests and responses are typed objects; errors are `clearscan.errors` subclasses whose
messages are safe to show the user (a decode error names the file)."""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from clearscan.errors import Unprocessable
from clearscan.imaging import DecodedImage, ImagingError, Limits, decode
from clearscan.inference.base import Model
from clearscan.inference.explain.heatmap import encode_heatmap
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.masks import decide, encode_label_map, resample, vessel_qca
from clearscan.inference.preprocess import preprocess
from clearscan.inference.types import ExplainMethod, ItemOutput, ModelLoadError

__all__ = [
    "TASKS",
    "ClassificationResponse",
    "ClassifiedImage",
    "FeatureContribution",
    "FeatureRow",
    "ImageClassificationTask",
    "ImageRequest",
    "ImageSegmentationTask",
    "ImageTask",
    "IncompatibleImage",
    "InferenceTask",
    "InvalidFeatures",
    "PreparedImages",
    "SegmentationResponse",
    "SegmentedImage",
    "TabularClassificationTask",
    "TabularOutput",
    "TabularRequest",
    "TabularResponse",
    "TaskKind",
    "WrongTask",
    "task_for",
    "task_kind",
]


class TaskKind(StrEnum):
    IMAGE_CLASSIFICATION = "image-classification"
    TABULAR_CLASSIFICATION = "tabular-classification"
    IMAGE_SEGMENTATION = "image-segmentation"


class WrongTask(Unprocessable):
    """The model does not do what the task asks (an image task for a tabular model)."""


class IncompatibleImage(Unprocessable):
    """The image decodes but the model cannot take it (modality, size)."""


class InvalidFeatures(Unprocessable):
    """Feature values the model cannot take (unknown names, wrong types, a value it cannot use)."""


def task_kind(manifest: ModelManifest) -> TaskKind:
    """The kind of task a model version serves, from its manifest."""
    if manifest.task == "classification":
        return (
            TaskKind.TABULAR_CLASSIFICATION if manifest.tabular else TaskKind.IMAGE_CLASSIFICATION
        )
    if manifest.task == "segmentation":
        return TaskKind.IMAGE_SEGMENTATION
    raise WrongTask(f"model {manifest.ref}: no inference task for {manifest.task!r}")


RequestT = TypeVar("RequestT")
PreparedT = TypeVar("PreparedT")
OutputT = TypeVar("OutputT")
ResponseT = TypeVar("ResponseT")


class InferenceTask(ABC, Generic[RequestT, PreparedT, OutputT, ResponseT]):
    """One kind of inference on one loaded model version (cheap to build per request)."""

    kind: ClassVar[TaskKind]

    def __init__(self, model: Model) -> None:
        kind = task_kind(model.manifest)
        if kind is not self.kind:
            raise WrongTask(f"model {model.manifest.ref} serves {kind}, not {self.kind}")
        self.model = model
        self.manifest = model.manifest

    @abstractmethod
    def preprocess(self, request: RequestT) -> PreparedT:
        """Validate the request and build the model's input; nothing has run yet."""

    @abstractmethod
    def run(self, prepared: PreparedT) -> OutputT:
        """Run the model version on prepared input."""

    @abstractmethod
    def postprocess(self, prepared: PreparedT, output: OutputT) -> ResponseT:
        """Turn the model's output into the response."""

    def __call__(self, request: RequestT) -> ResponseT:
        prepared = self.preprocess(request)
        return self.postprocess(prepared, self.run(prepared))


# --- images ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRequest:
    """Uploaded files (PNG, JPEG, DICOM, NIfTI), analysed as one batch."""

    uploads: Sequence[bytes]
    limits: Limits = field(default_factory=Limits)
    explain: bool = True
    method: ExplainMethod = ExplainMethod.GRADCAM


@dataclass(frozen=True)
class PreparedImages:
    """Every upload decoded, checked and turned into the model's input."""

    images: list[DecodedImage]  # metadata only: the pixel arrays are dropped once preprocessed
    tensors: list[np.ndarray]  # C x H x W float32 each, normalised as the manifest says
    boxes: list[tuple[int, int, int, int]]  # region of each image the model saw (x0, y0, x1, y1)
    prep_ms: list[float]  # preprocessing time of each image
    explain: bool
    method: ExplainMethod


OutT = TypeVar("OutT")
ResT = TypeVar("ResT")
_NO_PIXELS = np.zeros((0, 0), np.float32)  # a prepared image's pixels: only the tensor is kept


class ImageTask(InferenceTask[ImageRequest, PreparedImages, OutT, ResT]):
    """Tasks on images: decode, check and preprocess every upload before anything runs (a bad
    file refuses the whole request, naming the file).

    One file at a time: each upload is decoded, turned into the model's (small) input tensor, and
    its full-resolution arrays dropped before the next is decoded, so a request holds at most one
    decoded image, never 32. The files of one request share a decoded-bytes budget
    (`Limits.max_request_decoded_bytes`), checked from each file's header before it is decoded."""

    def check(self, img: DecodedImage) -> None:
        """IncompatibleImage when the model cannot take `img` (modality, size)."""
        m = self.manifest
        accepted = m.dicom_modalities
        if img.format == "dicom" and accepted and img.modality and img.modality not in accepted:
            raise IncompatibleImage(
                f"model {m.name} accepts DICOM modalities {', '.join(accepted)}; "
                f"this image is {img.modality}"
            )
        min_side = min(16, m.image.height, m.image.width)
        if min(img.width, img.height) < min_side:
            raise IncompatibleImage(
                f"image is {img.width}x{img.height}; model {m.name} needs at least "
                f"{min_side} pixels on each side"
            )

    def decode(self, uploads: Sequence[bytes], limits: Limits) -> Iterator[DecodedImage]:
        """Decode and check the uploads one at a time, each within what is left of the request's
        budget. Errors name the file (1-based)."""
        used = 0
        for i, data in enumerate(uploads, 1):
            try:
                img = decode(data, limits=limits.for_request(used))
            except ImagingError as exc:
                raise type(exc)(f"file {i}: {exc.detail}") from None
            try:
                self.check(img)
            except IncompatibleImage as exc:
                raise IncompatibleImage(f"file {i}: {exc.detail}") from None
            used += img.decoded_bytes
            yield img

    def preprocess(self, request: ImageRequest) -> PreparedImages:
        spec = self.manifest.image
        images, tensors, boxes, prep_ms = [], [], [], []
        for img in self.decode(request.uploads, request.limits):
            t0 = time.perf_counter()
            prep = preprocess(img.pixels, spec)
            prep_ms.append((time.perf_counter() - t0) * 1000)
            tensors.append(prep.tensor)
            boxes.append(prep.box)
            # keep the metadata, drop the full-resolution arrays before the next file decodes
            images.append(dataclasses.replace(img, pixels=_NO_PIXELS, values=None))
            del img
        return PreparedImages(
            images=images,
            tensors=tensors,
            boxes=boxes,
            prep_ms=prep_ms,
            explain=request.explain,
            method=ExplainMethod.parse(request.method),
        )


@dataclass(frozen=True)
class ClassifiedImage:
    image: DecodedImage
    probabilities: list[float]  # one per label, rounded to 6 places
    top_index: int  # the decided class (threshold applied)
    top_label: str
    box: tuple[int, int, int, int]  # region the model saw, in image pixels
    heatmap_png: bytes | None  # RGBA PNG at the activation's resolution; None: not explained
    inference_ms: float  # preprocessing + this image's share of the batch run + encoding
    ood_score: float | None = None  # > 1: outside the model's training inputs
    batch_size: int = 1  # images in the model run this one was part of


@dataclass(frozen=True)
class ClassificationResponse:
    items: list[ClassifiedImage]  # in upload order
    prepared: PreparedImages  # the model inputs, for another version to see the same thing


class ImageClassificationTask(
    ImageTask[list[ItemOutput], ClassificationResponse],
):
    """Class probabilities for each image, and a heatmap when asked and the model can explain.
    All images of a request go through the version's micro-batcher together (concurrent requests
    share model runs; probabilities and the heatmap come from one pass)."""

    kind = TaskKind.IMAGE_CLASSIFICATION

    def run(self, prepared: PreparedImages) -> list[ItemOutput]:
        return self.model.batcher(prepared.method).predict(
            prepared.tensors, explain=prepared.explain
        )

    def postprocess(
        self, prepared: PreparedImages, output: list[ItemOutput]
    ) -> ClassificationResponse:
        labels = self.manifest.labels
        items = []
        for img, box, ms, out in zip(
            prepared.images, prepared.boxes, prepared.prep_ms, output, strict=True
        ):
            t0 = time.perf_counter()
            png = encode_heatmap(out.cam) if out.cam is not None else None
            enc_ms = (time.perf_counter() - t0) * 1000
            top = int(out.top)
            items.append(
                ClassifiedImage(
                    image=img,
                    probabilities=[round(float(p), 6) for p in out.probabilities],
                    top_index=top,
                    top_label=labels[top],
                    box=box,
                    heatmap_png=png,
                    inference_ms=round(ms + out.run_ms / out.batch_size + enc_ms, 3),
                    ood_score=None if out.ood_score is None else round(out.ood_score, 4),
                    batch_size=out.batch_size,
                )
            )
        return ClassificationResponse(items=items, prepared=prepared)


# --- segmentation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentedImage:
    """One image's label map at the image's own resolution (row for row, column for column with
    the decoded pixels: overlays need no transform) and the area of each class."""

    image: DecodedImage
    label_map: np.ndarray = field(repr=False)  # uint8 H x W, 0 = labels[0] (the background)
    labels: list[str]
    area_px: dict[str, int]  # every class but the background
    area_mm2: dict[str, float] | None  # None: the image has no known pixel spacing
    box: tuple[int, int, int, int]  # region the model saw, in image pixels
    mask_png: bytes  # the label map as an 8-bit grayscale PNG (pixel value = class index)
    inference_ms: float
    batch_size: int = 1
    # the manifest's measurement recipes (vessel-qca: clearscan.measure.QcaResult.to_json())
    measurements: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        """No pixel of any class but the background."""
        return not any(self.area_px.values())


@dataclass(frozen=True)
class SegmentationResponse:
    items: list[SegmentedImage]  # in upload order
    prepared: PreparedImages


class ImageSegmentationTask(ImageTask[list[ItemOutput], SegmentationResponse]):
    """A label map per image. The model's class probabilities are resampled (bilinear) from its
    output grid back onto the region of the image it saw, then decided per pixel (argmax, or
    per-class thresholds), cleaned (components under `min_component_px` dropped, only the
    `keep_largest` components of each class kept) and placed at the image's resolution; pixels
    outside that region (a centre crop) are background. Images go through the version's
    micro-batcher together, as for classification."""

    kind = TaskKind.IMAGE_SEGMENTATION

    def run(self, prepared: PreparedImages) -> list[ItemOutput]:
        return self.model.batcher(ExplainMethod.GRADCAM).predict(prepared.tensors, explain=False)

    def postprocess(
        self, prepared: PreparedImages, output: list[ItemOutput]
    ) -> SegmentationResponse:
        items = []
        for img, box, ms, out in zip(
            prepared.images, prepared.boxes, prepared.prep_ms, output, strict=True
        ):
            if out.map is None:
                raise WrongTask(f"model {self.manifest.ref} returned no segmentation map")
            t0 = time.perf_counter()
            label_map = self.label_map(out.map, img, box)
            items.append(self._item(img, box, label_map, ms + out.run_ms / out.batch_size, t0, out))
        return SegmentationResponse(items=items, prepared=prepared)

    def label_map(
        self, probs: np.ndarray, img: DecodedImage, box: tuple[int, int, int, int]
    ) -> np.ndarray:
        """The uint8 label map (img.height x img.width) of one C x h x w probability map."""
        x0, y0, x1, y1 = box
        region = resample(probs, (y1 - y0, x1 - x0))
        decided = decide(region, self.manifest)
        full = np.zeros((img.height, img.width), np.uint8)
        full[y0:y1, x0:x1] = decided
        return full

    def _item(
        self,
        img: DecodedImage,
        box: tuple[int, int, int, int],
        label_map: np.ndarray,
        ms: float,
        t0: float,
        out: ItemOutput,
    ) -> SegmentedImage:
        labels = list(self.manifest.labels)
        counts = np.bincount(label_map.ravel(), minlength=len(labels))
        area_px = {labels[c]: int(counts[c]) for c in range(1, len(labels))}
        spacing = img.spacing
        area_mm2 = (
            None
            if spacing is None
            else {k: round(v * spacing.pixel_area_mm2, 4) for k, v in area_px.items()}
        )
        png = encode_label_map(label_map)
        spec = self.manifest.segmentation
        measurements = None
        if spec is not None and "vessel-qca" in spec.measurements:
            measurements = {"vessel-qca": vessel_qca(label_map, spacing, spec)}
        return SegmentedImage(
            image=img,
            label_map=label_map,
            labels=labels,
            area_px=area_px,
            area_mm2=area_mm2,
            box=box,
            mask_png=png,
            inference_ms=round(ms + (time.perf_counter() - t0) * 1000, 3),
            batch_size=out.batch_size,
            measurements=measurements,
        )


# --- tables ---------------------------------------------------------------------------------------


@runtime_checkable
class RowModel(Protocol):
    """What a tabular task needs from its runtime (the scikit-learn one)."""

    def explain_row(self, row: np.ndarray) -> tuple[np.ndarray, int, list[float]]: ...

    def ood_score(self, row: np.ndarray) -> float | None: ...


@dataclass(frozen=True)
class TabularRequest:
    """Feature name -> value. Missing or null values are allowed (the model's pipeline imputes
    them); numeric features also take numbers written as strings."""

    values: Mapping[str, Any]


@dataclass(frozen=True)
class FeatureRow:
    values: Mapping[str, Any]  # as submitted
    row: np.ndarray  # object array in the manifest's feature order, coerced


@dataclass(frozen=True)
class TabularOutput:
    probabilities: np.ndarray  # C
    top: int
    contributions: list[float]  # one per feature, in the manifest's order
    ood_score: float | None
    run_ms: float


@dataclass(frozen=True)
class FeatureContribution:
    feature: str
    value: Any  # as submitted
    contribution: float  # drop in the decided class's log-odds at the feature's baseline


@dataclass(frozen=True)
class TabularResponse:
    probabilities: list[float]  # one per label, rounded to 6 places
    top_index: int
    top_label: str
    contributions: list[FeatureContribution]
    inference_ms: float
    ood_score: float | None = None  # > 1: outside the model's training rows


class TabularClassificationTask(
    InferenceTask[TabularRequest, FeatureRow, TabularOutput, TabularResponse]
):
    """Class probabilities for one row of feature values, with per-feature contributions."""

    kind = TaskKind.TABULAR_CLASSIFICATION

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        if not isinstance(model, RowModel):
            raise WrongTask(f"model {model.manifest.ref}: its runtime does not take rows")
        self.rows: RowModel = model

    def preprocess(self, request: TabularRequest) -> FeatureRow:
        """The row in the model's feature order; InvalidFeatures naming the first problem."""
        m = self.manifest
        values = request.values
        feats = m.features or []
        known = {f.name for f in feats}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidFeatures(f"unknown feature(s) for {m.ref}: {', '.join(unknown[:10])}")
        row: list[Any] = []
        for f in feats:
            v = values.get(f.name)
            if v is None:
                row.append(math.nan if f.type == "numeric" else None)
            elif f.type == "numeric":
                if isinstance(v, bool) or not isinstance(v, int | float):
                    try:
                        v = float(str(v))
                    except ValueError:
                        # the name only: the value may identify a patient (it is audited)
                        raise InvalidFeatures(
                            f"feature {f.name!r} is numeric; got a value that is not a number"
                        ) from None
                if not math.isfinite(float(v)):
                    raise InvalidFeatures(f"feature {f.name!r} must be a finite number")
                row.append(float(v))
            else:
                if not isinstance(v, str | int | float) or isinstance(v, bool):
                    raise InvalidFeatures(f"feature {f.name!r} must be a string")
                row.append(str(v))
        return FeatureRow(values=values, row=np.array(row, dtype=object))

    def run(self, prepared: FeatureRow) -> TabularOutput:
        t0 = time.perf_counter()
        try:
            probs, top, contrib = self.rows.explain_row(prepared.row)
            ood = self.rows.ood_score(prepared.row)
        except ModelLoadError as exc:  # e.g. a missing value the pipeline cannot impute
            raise InvalidFeatures(
                f"the model cannot predict from these values: {exc}"[:500]
            ) from None
        return TabularOutput(
            probabilities=probs,
            top=top,
            contributions=contrib,
            ood_score=ood,
            run_ms=(time.perf_counter() - t0) * 1000,
        )

    def postprocess(self, prepared: FeatureRow, output: TabularOutput) -> TabularResponse:
        m = self.manifest
        feats = m.features or []
        return TabularResponse(
            probabilities=[round(float(p), 6) for p in output.probabilities],
            top_index=output.top,
            top_label=m.labels[output.top],
            contributions=[
                FeatureContribution(
                    feature=f.name, value=prepared.values.get(f.name), contribution=c
                )
                for f, c in zip(feats, output.contributions, strict=True)
            ],
            inference_ms=round(output.run_ms, 3),
            ood_score=output.ood_score,
        )


TASKS: dict[TaskKind, type[InferenceTask[Any, Any, Any, Any]]] = {
    TaskKind.IMAGE_CLASSIFICATION: ImageClassificationTask,
    TaskKind.TABULAR_CLASSIFICATION: TabularClassificationTask,
    TaskKind.IMAGE_SEGMENTATION: ImageSegmentationTask,
}


def task_for(model: Model) -> InferenceTask[Any, Any, Any, Any]:
    """The task serving `model`, by its manifest."""
    return TASKS[task_kind(model.manifest)](model)
