"""Pydantic in/out models for teams."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

TEAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=TEAM_NAME_PATTERN,
        description="letters, digits, '.', '_' and '-'; 1 to 64 characters",
    )


class TeamPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    created_at: datetime
    members: int = Field(description="how many users belong to it")


class TeamList(BaseModel):
    items: list[TeamPublic]
    total: int
