"""Audit event out-models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    at: datetime
    actor: str | None
    action: str
    object_type: str | None
    object_id: str | None
    outcome: str
    client_addr: str | None
    request_id: str | None
    details: dict[str, Any]
    hash: str


class AuditList(BaseModel):
    items: list[AuditEventPublic]
    total: int


class ChainStatus(BaseModel):
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
