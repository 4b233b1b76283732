"""Roll-out state of each model name: which version serves, what to roll back to, canary and
shadow. Versions themselves are immutable folders in the model store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from clearscan.db.base import Base, UTCDateTime, utcnow


class ModelState(Base):
    __tablename__ = "model_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    active_version: Mapped[str] = mapped_column(String(64))
    history: Mapped[list[str]] = mapped_column(
        JSON, default=list
    )  # previously active, oldest first
    canary_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    canary_percent: Mapped[int] = mapped_column(Integer, default=0)
    shadow_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ShadowResult(Base):
    """What a shadow version said about an input the active (or canary) version answered.
    Never shown to clinicians; summarised in the roll-out report."""

    __tablename__ = "shadow_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    served_version: Mapped[str] = mapped_column(String(64))
    shadow_version: Mapped[str] = mapped_column(String(64), index=True)
    prediction_id: Mapped[str] = mapped_column(String(36))
    served_label: Mapped[str] = mapped_column(String(128))
    shadow_label: Mapped[str] = mapped_column(String(128))
    served_ms: Mapped[float] = mapped_column(Float)
    shadow_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
