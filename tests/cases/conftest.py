"""Fixtures for cases service tests: the rolled-back `db` on SQLite and (when it answers)
PostgreSQL, a blob store, manifests and analysis results as an inference task returns them, and
row factories for cases with their images, predictions and reviews.

Users come from the auth factories (`make_user_row`, re-exported here)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearscan.auth.models import User
from clearscan.cases.models import Case, Image, Prediction, Review, new_id
from clearscan.config import Settings
from clearscan.imaging.formats.base import DecodedImage
from clearscan.inference.manifest import FeatureSpec, InputSpec, ModelManifest
from clearscan.inference.tasks import ClassifiedImage, FeatureContribution, TabularResponse
from clearscan.storage import LocalBlobStore
from tests.auth.conftest import UserFactory, make_user_row
from tests.conftest import ADMIN_PASSWORD, pg_available, pg_database, rolled_back_session

__all__ = ["UserFactory", "make_user_row"]  # the auth user factory, for the cases tests too

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LABELS = ["normal", "pneumonia"]
_WEIGHTS_SHA = "0" * 64
_blob_counter = itertools.count()


# --- the database: SQLite always, PostgreSQL when the machine's server answers -----------------


@pytest.fixture(scope="session")
def pg_migrated_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A fresh PostgreSQL database migrated to head once for the run, dropped afterwards."""
    from clearscan.db import create_db_engine
    from clearscan.db.migrate import upgrade

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("pg-service-data"),
        admin_password=ADMIN_PASSWORD,
        secret_key="test-secret-key-that-is-long-enough-0123456789",
    )
    with pg_database(settings) as pg:
        upgrade(pg.database_url)
        engine = create_db_engine(pg.database_url)
        try:
            yield engine
        finally:
            engine.dispose()


_needs_pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL on 127.0.0.1:5432 is down")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=_needs_pg)])
def db(request: pytest.FixtureRequest, migrated_engine: Engine) -> Iterator[Session]:
    """The root `db` fixture (a session in a transaction rolled back after the test; what the
    service commits is a savepoint), once on SQLite and once on PostgreSQL."""
    engine = (
        migrated_engine
        if request.param == "sqlite"
        else request.getfixturevalue("pg_migrated_engine")
    )
    with rolled_back_session(engine) as session:
        yield session


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


# --- what an inference task hands to the save functions ----------------------------------------


def image_manifest(
    name: str = "pneumonia-cxr", version: str = "1.0.0", labels: Sequence[str] = LABELS
) -> ModelManifest:
    return ModelManifest(
        name=name,
        version=version,
        weights="model.onnx",
        labels=list(labels),
        input=InputSpec(height=8, width=8),
        files={"model.onnx": _WEIGHTS_SHA},
    )


def tabular_manifest(
    name: str = "risk-tab",
    version: str = "2.1.0",
    labels: Sequence[str] = ("low", "high"),
    features: Sequence[str] = ("age", "bmi", "smoker"),
) -> ModelManifest:
    return ModelManifest(
        name=name,
        version=version,
        runtime="sklearn",
        weights="model.skops",
        labels=list(labels),
        features=[FeatureSpec(name=f) for f in features],
        files={"model.skops": _WEIGHTS_SHA},
    )


def decoded(
    *, fmt: str = "png", width: int = 64, height: int = 48, modality: str | None = None
) -> DecodedImage:
    return DecodedImage(
        pixels=np.zeros((height, width), np.float32),
        values=None,
        format=fmt,
        width=width,
        height=height,
        channels=1,
        bit_depth=8,
        frames=1,
        frame_index=0,
        modality=modality,
        photometric="MONOCHROME2",
        study_uid="1.2.3" if fmt == "dicom" else None,
        series_uid="1.2.3.4" if fmt == "dicom" else None,
        sop_uid="1.2.3.4.5" if fmt == "dicom" else None,
        window=None,
        transfer_syntax=None,
    )


def classified(
    top_label: str = "pneumonia",
    *,
    labels: Sequence[str] = LABELS,
    image: DecodedImage | None = None,
    heatmap_png: bytes | None = None,
    ood_score: float | None = None,
    inference_ms: float = 12.5,
) -> ClassifiedImage:
    """One image's analysis deciding `top_label` (probability 0.9, the rest shared)."""
    top = list(labels).index(top_label)
    rest = round(0.1 / (len(labels) - 1), 6)
    probs = [0.9 if i == top else rest for i in range(len(labels))]
    return ClassifiedImage(
        image=image or decoded(),
        probabilities=probs,
        top_index=top,
        top_label=top_label,
        box=(1, 2, 41, 42),
        heatmap_png=heatmap_png,
        inference_ms=inference_ms,
        ood_score=ood_score,
    )


def tabular_result(top_label: str = "high", *, ood_score: float | None = None) -> TabularResponse:
    return TabularResponse(
        probabilities=[0.25, 0.75] if top_label == "high" else [0.75, 0.25],
        top_index=1 if top_label == "high" else 0,
        top_label=top_label,
        contributions=[
            FeatureContribution(feature="age", value=61, contribution=0.4),
            FeatureContribution(feature="smoker", value="yes", contribution=-0.1),
        ],
        inference_ms=3.25,
        ood_score=ood_score,
    )


# --- rows written directly (no blobs, no audit events) -----------------------------------------

# One image of a case row: (model name, model version, top label); labels are LABELS.
ImageSpec = tuple[str, str, str]
CaseFactory = Callable[..., Case]
ReviewFactory = Callable[..., Review]


@pytest.fixture
def make_case_row(db: Session, make_user_row: UserFactory) -> CaseFactory:
    """Insert a case with one image and one prediction per entry of `images`:
    ``make_case_row(user, created_at=T0, images=[("pneumonia-cxr", "1.0.0", "normal")])``."""

    def make(
        user: User | None = None,
        *,
        created_at: datetime = T0,
        images: Sequence[ImageSpec] = (("pneumonia-cxr", "1.0.0", "pneumonia"),),
        patient_ref: str | None = None,
        note: str | None = None,
        case_id: str | None = None,
    ) -> Case:
        user = user or make_user_row()
        case = Case(
            id=case_id or new_id(),
            created_by_id=user.id,
            created_at=created_at,
            patient_ref=patient_ref,
            note=note,
        )
        for pos, (model, version, top) in enumerate(images):
            digest = hashlib.sha256(f"blob-{next(_blob_counter)}".encode()).hexdigest()
            image = Image(
                position=pos,
                sha256=digest,
                size_bytes=100 + pos,
                format="png",
                width=64,
                height=48,
                created_at=created_at,
            )
            image.predictions.append(
                Prediction(
                    case_id=case.id,
                    model_name=model,
                    model_version=version,
                    labels=list(LABELS),
                    probabilities=[0.9 if label == top else 0.1 for label in LABELS],
                    top_label=top,
                    inference_ms=10.0,
                    details={},
                    created_at=created_at,
                )
            )
            case.images.append(image)
        db.add(case)
        db.flush()
        return case

    return make


@pytest.fixture
def make_review_row(db: Session) -> ReviewFactory:
    """Insert a review of `prediction` by `user` directly (no audit event)."""

    def make(
        prediction: Prediction,
        user: User,
        *,
        agree: bool = True,
        correct_label: str | None = None,
        comment: str | None = None,
    ) -> Review:
        review = Review(
            prediction_id=prediction.id,
            user_id=user.id,
            agree=agree,
            correct_label=correct_label if correct_label is not None else prediction.top_label,
            comment=comment,
        )
        db.add(review)
        db.flush()
        return review

    return make
