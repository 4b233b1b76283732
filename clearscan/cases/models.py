"""Cases, their images, the predictions made on them and the reviews of those predictions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false

from clearscan.db.base import Base, UTCDateTime, utcnow
from clearscan.teams import models as _teams  # noqa: F401  (the table team_id references)


def new_id() -> str:
    return str(uuid.uuid4())


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    patient_ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # keyed HMAC of the DICOM PatientID (+ issuer): links one patient's cases without the ID
    patient_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the team it was created in; only that team's members (and admins) see it
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True, index=True)

    images: Mapped[list[Image]] = relationship(
        back_populates="case", order_by="Image.position", cascade="all, delete-orphan"
    )


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer, default=1)
    bit_depth: Mapped[int] = mapped_column(Integer, default=8)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    frame_index: Mapped[int] = mapped_column(Integer, default=0)
    study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the DICOM header said BurnedInAnnotation=YES: text (identifiers) may be in the pixels
    burned_in_annotation: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    case: Mapped[Case] = relationship(back_populates="images")
    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="image", order_by="Prediction.created_at", cascade="all, delete-orphan"
    )


class OriginalImage(Base):
    """An upload as received, before de-identification (CLEARSCAN_KEEP_ORIGINALS): its blob is
    referenced from here only, and only the admin route serves it."""

    __tablename__ = "original_images"

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON)
    probabilities: Mapped[list[float]] = mapped_column(JSON)
    top_label: Mapped[str] = mapped_column(String(128), index=True)
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heatmap_box: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # segmentations: the label map PNG (pixel value = index into labels, at the image's size)
    mask_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    inference_ms: Mapped[float] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")
    reviews: Mapped[list[Review]] = relationship(
        back_populates="prediction", order_by="Review.created_at", cascade="all, delete-orphan"
    )
    finding_reviews: Mapped[list[FindingReview]] = relationship(
        order_by="FindingReview.created_at", cascade="all, delete-orphan"
    )


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    agree: Mapped[bool] = mapped_column(Boolean)
    correct_label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    prediction: Mapped[Prediction] = relationship(back_populates="reviews")


class FindingReview(Base):
    """A reviewer's verdict on one finding of a prediction: a stenosis of its QCA, by position
    in the prediction's list (most severe first)."""

    __tablename__ = "finding_reviews"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    finding: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    accept: Mapped[bool] = mapped_column(Boolean)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
