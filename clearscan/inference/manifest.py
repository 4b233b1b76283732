"""Model package manifest (manifest.json beside the weights). Validated on load; errors
(ManifestError, 422) name the field."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clearscan.errors import Unprocessable


class ManifestError(Unprocessable, ValueError):
    """The package's manifest or files are invalid; the message names the field or file."""


# What a model name and version may be (see clearscan.registry.ref, which parses and orders
# them); also the JSON-schema patterns of docs/manifest.schema.json.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)

MANIFEST_FILE = "manifest.json"


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "image"
    channels: Literal[1, 3] = 1
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    crop: Literal["center_square", "none"] = "center_square"
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    value_range: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) not in (1, self.channels):
                raise ValueError(f"input.{field} must have 1 or {self.channels} values")
        if any(s == 0 for s in self.std):
            raise ValueError("input.std must not contain 0")
        return self


class FeatureSpec(BaseModel):
    """One input column of a tabular model (scikit-learn)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    type: Literal["numeric", "categorical"] = "numeric"
    # the value that stands for "typical" in per-feature contributions (training median / mode)
    baseline: float | str | None = None


class WindowSpec(BaseModel):
    """Sensor-stream models: the features are statistics of a window of raw samples."""

    model_config = ConfigDict(extra="forbid")
    channels: list[str] = Field(min_length=1)
    length: int = Field(ge=4, le=100_000)
    step: int = Field(ge=1)
    sample_rate: float = Field(gt=0)  # samples per second (1.0: unknown)


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "logits"
    kind: Literal["logits", "probabilities"] = "logits"


class ExplainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["gradcam", "none"] = "gradcam"
    target: str | None = None  # tensor name of the target activation; None: found in the graph


class BatchingSpec(BaseModel):
    """Dynamic micro-batching of concurrent requests for this model version."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    # 0: no added wait; requests that queue while a batch runs go together in the next one.
    max_delay_ms: float = Field(default=0.0, ge=0, le=1000)


class OodSpec(BaseModel):
    """Reference statistics of the training inputs for the out-of-domain guard."""

    model_config = ConfigDict(extra="forbid")
    file: str  # JSON written by clearscan.inference.ood (listed in `files`)


class ThresholdSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    value: float = Field(gt=0, lt=1)
    folded_into_bias: bool = False


class SegmentationSpec(BaseModel):
    """How a segmentation model's N x C x H x W output becomes a label map (`labels[0]` is the
    background), and which measurements apply to it."""

    model_config = ConfigDict(extra="forbid")
    # argmax: each pixel takes its most probable class; threshold: a pixel takes the most
    # probable class whose probability reaches that class's threshold, else background
    decision: Literal["argmax", "threshold"] = "argmax"
    thresholds: dict[str, float] = Field(default_factory=dict)
    # connected components (8-connected) smaller than this many pixels are dropped
    min_component_px: int = Field(default=0, ge=0, le=1_000_000)
    # keep only the largest N components of each class (None: all)
    keep_largest: int | None = Field(default=None, ge=1, le=10_000)
    # measurement recipes computed from the mask (clearscan.measure)
    measurements: list[Literal["vessel-qca"]] = Field(default_factory=list)
    # vessel-qca: narrowings of at least this percent diameter stenosis are listed as stenoses
    stenosis_threshold_percent: float = Field(default=50.0, gt=0, lt=100)

    @model_validator(mode="after")
    def _check(self) -> SegmentationSpec:
        for label, value in self.thresholds.items():
            if not 0.0 < value < 1.0:
                raise ValueError(f"segmentation.thresholds.{label} must be between 0 and 1")
        return self


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    task: Literal["classification", "segmentation"] = "classification"
    # onnx: ONNX Runtime; torchscript: PyTorch (torch.jit.load; never torch.load's pickles);
    # sklearn: a scikit-learn estimator saved with skops (never pickle/joblib)
    runtime: Literal["onnx", "torchscript", "sklearn"] = "onnx"
    weights: str
    labels: list[str] = Field(min_length=1)
    modality: str | None = None
    dicom_modalities: list[str] | None = None
    body_part: str | None = None
    description: str | None = None
    input: InputSpec | None = None  # image models
    features: list[FeatureSpec] | None = None  # tabular models: named feature values
    window: WindowSpec | None = None  # sensor-stream models: features computed from a window
    output: OutputSpec = Field(default_factory=OutputSpec)
    explain: ExplainSpec = Field(default_factory=ExplainSpec)
    threshold: ThresholdSpec | None = None
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    ood: OodSpec | None = None
    segmentation: SegmentationSpec | None = None  # segmentation models (task: segmentation)
    metrics: dict[str, object] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    intended_use: str | None = None
    limitations: str | None = None
    license: str | None = None
    model_card: str | None = None
    files: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelManifest:
        if (self.input is None) == (self.features is None):
            raise ValueError("give exactly one of input (image models) and features (tabular)")
        if self.features is not None:
            if self.runtime != "sklearn":
                raise ValueError("features: tabular models use the sklearn runtime")
            names = [f.name for f in self.features]
            if not names or len(set(names)) != len(names):
                raise ValueError("features: names must be unique and at least one is needed")
        if self.window is not None and self.features is None:
            raise ValueError("window: only tabular (features) models are computed from windows")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.weights not in self.files:
            raise ValueError(f"files must list the sha256 of the weights file {self.weights!r}")
        for fname, digest in self.files.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"files.{fname} is not a sha256 hex digest")
            if "/" in fname or "\\" in fname or fname.startswith("."):
                raise ValueError(f"files.{fname}: only plain file names are allowed")
        if self.ood and self.ood.file not in self.files:
            raise ValueError(f"ood.file {self.ood.file!r} must be listed in files")
        if self.threshold and self.threshold.label not in self.labels:
            raise ValueError(f"threshold.label {self.threshold.label!r} is not one of labels")
        if self.task == "segmentation":
            self._check_segmentation()
        elif self.segmentation is not None:
            raise ValueError("segmentation: only segmentation models (task: segmentation)")
        return self

    def _check_segmentation(self) -> None:
        if self.input is None:
            raise ValueError("task segmentation: segmentation models take images (input)")
        if len(self.labels) < 2:
            raise ValueError("labels: a segmentation needs the background and at least one class")
        if self.runtime == "sklearn":
            raise ValueError("task segmentation: runtime must be onnx or torchscript")
        if self.threshold is not None:
            raise ValueError("threshold: a segmentation decides per pixel (segmentation.*)")
        if self.ood is not None:
            raise ValueError("ood: segmentation models have no out-of-domain reference yet")
        spec = self.segmentation or SegmentationSpec()
        foreground = self.labels[1:]
        unknown = sorted(set(spec.thresholds) - set(foreground))
        if unknown:
            raise ValueError(
                f"segmentation.thresholds: {', '.join(unknown)} is not a class other than the "
                f"background {self.labels[0]!r}"
            )
        if spec.decision == "threshold" and set(spec.thresholds) != set(foreground):
            missing = sorted(set(foreground) - set(spec.thresholds))
            raise ValueError(
                f"segmentation.thresholds: decision threshold needs one for {', '.join(missing)}"
            )
        if self.segmentation is None:
            self.segmentation = spec

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def tabular(self) -> bool:
        return self.features is not None

    @property
    def image(self) -> InputSpec:
        """The image input spec; a tabular model has none."""
        if self.input is None:
            raise ValueError(f"model {self.ref} takes feature values, not images")
        return self.input


def load_manifest(package_dir: Path) -> ModelManifest:
    path = package_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{package_dir.name}: {MANIFEST_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{package_dir.name}: {MANIFEST_FILE} is not valid JSON: {exc}"
        ) from None
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"{package_dir.name}: {loc}: {first['msg']}") from None


def verify_files(package_dir: Path, manifest: ModelManifest) -> None:
    """Check every listed file's sha256; raise ManifestError naming the first bad file."""
    for fname, expected in manifest.files.items():
        path = package_dir / fname
        try:
            digest = _sha256_file(path)
        except FileNotFoundError:
            raise ManifestError(f"{manifest.ref}: file {fname} is missing") from None
        if digest != expected:
            raise ManifestError(f"{manifest.ref}: file {fname} failed its sha256 check")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
