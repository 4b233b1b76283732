"""Datasets: an immutable, content-addressed collection of labelled images (each image a blob,
listed with its split and class) or a table (a CSV blob with its column summary)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from clearscan.db.base import Base, UTCDateTime, utcnow
from clearscan.teams import models as _teams  # noqa: F401  (the table team_id references)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # images | table | segmentation
    source_format: Mapped[str] = mapped_column(String(16))  # folder | npz | csv | pairs
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    classes: Mapped[list[str]] = mapped_column(JSON)
    counts: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON)  # split -> class -> n
    n_items: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # summaries, split recipe, warnings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the team it was imported in; only that team's members (and admins) see it
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True, index=True)


class DatasetItem(Base):
    """One image of an image dataset (tables keep their rows in the CSV blob)."""

    __tablename__ = "dataset_items"

    dataset_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String(8), index=True)
    label: Mapped[int] = mapped_column(Integer)
    blob: Mapped[str] = mapped_column(String(64))
    # segmentation datasets: the item's label map (8-bit PNG; value = index into classes)
    mask_blob: Mapped[str | None] = mapped_column(String(64), nullable=True)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
