"""The items of a batch. The batch itself is its job row (`jobs`, kind ``batch``): status,
parameters, progress, who submitted it; each image of it is a row here, in order."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearscan.db.base import Base, UTCDateTime

BATCH_KIND: Final = "batch"
"""The job kind of a batch."""
ITEM_STATUSES = ("queued", "succeeded", "failed")


class BatchItem(Base):
    """One image of a batch and what became of it: the case made from it, or why not."""

    __tablename__ = "batch_items"

    batch_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based, the order of analysis
    # the sha256 of the image's bytes: kept in the blob store's staging area under `staged`
    # until analysed (archive items), else the blob of the stored image it was taken from
    digest: Mapped[str] = mapped_column(String(64))
    staged: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # the file's name in the archive (its last part), shown beside the result; never a path
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # the stored image it was taken from, for a batch of images already in cases
    source_image_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # written in the same transaction as the case itself: a case exists iff an item names it
    case_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("cases.id", ondelete="SET NULL"), nullable=True, unique=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
