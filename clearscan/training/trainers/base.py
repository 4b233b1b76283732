"""The trainer contract. A trainer turns one dataset kind into a fitted model: it gets a
:class:`TrainJob` (the request, the dataset, where to read its items and how to report progress)
and returns a :class:`Fitted` model that knows how to write itself as a model package once the
run has its name and version. What a run produced is a :class:`TrainResult`: the job's stored
result (the API's `result` object) and what the training pages show, read back with
:meth:`TrainResult.from_json`.

Importing this module never imports PyTorch or scikit-learn."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from sqlalchemy.orm import Session

from clearscan.datasets.models import Dataset
from clearscan.jobs.service import JobContext
from clearscan.storage.base import BlobStore

__all__ = ["Fitted", "TrainJob", "TrainRequest", "TrainResult", "Trainer"]

TrainerKind = Literal["image", "table"]


@dataclass(frozen=True)
class TrainRequest:
    """What a training run was asked for (the job's parameters)."""

    dataset: str  # name or id
    recipe: str | None = None
    epochs: int | None = None
    seed: int = 0
    model_name: str | None = None
    window: int | None = None  # sensor streams: samples per window
    step: int | None = None  # sensor streams: samples between window starts

    def to_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def of_params(cls, p: dict[str, Any]) -> TrainRequest:
        return cls(
            dataset=p["dataset"],
            recipe=p.get("recipe"),
            epochs=p.get("epochs"),
            seed=int(p.get("seed", 0)),
            model_name=p.get("model_name"),
            window=p.get("window"),
            step=p.get("step"),
        )


@dataclass(frozen=True)
class TrainJob:
    """A trainer's input. `db` is open for the whole run; `workdir` is an empty temporary
    folder that lives until the package is published."""

    ctx: JobContext
    db: Session
    blobs: BlobStore
    dataset: Dataset
    request: TrainRequest
    workdir: Path


def _float(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced. `to_json()` is the job's stored result (its keys are the
    API contract: an image run and a table run each keep their own set); `from_json()` reads a
    stored result back, tolerating missing or malformed fields."""

    kind: TrainerKind
    recipe: str  # the recipe's name (a table run: the one cross-validation chose)
    val_metrics: dict[str, Any]  # n, accuracy, auc, balanced_accuracy, sensitivity, ...
    threshold: float | None  # two classes: the decision threshold on P(second class)
    dataset: dict[str, Any]  # name, hash (and license for tables)
    recipe_params: dict[str, Any] = field(default_factory=dict)  # image: the full recipe
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: loss, val_auc, ...
    epochs_run: int | None = None
    best_epoch: int | None = None
    wall_s: float | None = None
    cross_validation: dict[str, dict[str, float]] = field(default_factory=dict)
    feature_importance: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""  # filled when the version is published
    version: str = ""

    @property
    def model(self) -> str:
        """The published NAME:VERSION ("" before publishing)."""
        return f"{self.name}:{self.version}" if self.name and self.version else ""

    def published(self, name: str, version: str) -> TrainResult:
        return replace(self, name=name, version=version)

    def to_json(self) -> dict[str, Any]:
        head = {"model": self.model, "name": self.name, "version": self.version}
        if self.kind == "table":
            return {
                **head,
                "recipe": self.recipe,
                "cross_validation": self.cross_validation,
                "dataset": self.dataset,
                "val_metrics": self.val_metrics,
                "threshold": self.threshold,
                "feature_importance": self.feature_importance[:20],
            }
        return {
            **head,
            "recipe": self.recipe_params or {"name": self.recipe},
            "dataset": self.dataset,
            "val_metrics": self.val_metrics,
            "threshold": self.threshold,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_json(
        cls, r: dict[str, Any], *, history: list[dict[str, Any]] | None = None
    ) -> TrainResult:
        """A stored result (a job's `result`); `history` (per-epoch rows) comes from the job's
        progress, where the run keeps it."""
        recipe = r.get("recipe")
        cv = r.get("cross_validation")
        imp = r.get("feature_importance")
        metrics = r.get("val_metrics")
        ds = r.get("dataset")
        params = recipe if isinstance(recipe, dict) else {}
        return cls(
            kind="table" if isinstance(cv, dict) else "image",
            recipe=str(params.get("name", "")) if params else str(recipe or ""),
            val_metrics=metrics if isinstance(metrics, dict) else {},
            threshold=_float(r.get("threshold")),
            dataset=ds if isinstance(ds, dict) else {},
            recipe_params=params,
            history=[h for h in history or [] if isinstance(h, dict)],
            epochs_run=_int(r.get("epochs_run")),
            best_epoch=_int(r.get("best_epoch")),
            wall_s=_float(r.get("wall_s")),
            cross_validation=(
                {k: v for k, v in cv.items() if isinstance(v, dict)} if isinstance(cv, dict) else {}
            ),
            feature_importance=[f for f in imp if isinstance(f, dict)]
            if isinstance(imp, list)
            else [],
            name=str(r.get("name") or ""),
            version=str(r.get("version") or ""),
        )


class Fitted(ABC):
    """A trained model, not yet packaged."""

    result: TrainResult

    @abstractmethod
    def write_package(self, pkg: Path, *, name: str, version: str) -> None:
        """Write the model package (weights, manifest.json with file hashes, MODEL_CARD.md and
        any out-of-domain reference) into the new folder `pkg`."""


class Trainer(ABC):
    """Trains models for one dataset kind (`Dataset.kind`: "images" or "table")."""

    dataset_kind: ClassVar[str]

    @abstractmethod
    def train(self, job: TrainJob) -> Fitted:
        """Train on the dataset's train split, choose what is chosen on its val split; report
        progress through `job.ctx` (which raises JobCancelled when the run was cancelled).
        Raises TrainingError (422) for data it cannot train on."""
