"""Pydantic in/out models for users and tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from clearscan.auth.models import Role
from clearscan.config import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{3,64}$"


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (OAuth2 token type, not a secret)
    expires_in: int


TeamNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]],
    Field(max_length=100, description="names of existing teams; [] for none"),
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)
    role: Role = Role.viewer
    teams: TeamNames | None = Field(
        default=None, description="the teams the user belongs to (default: the team general)"
    )


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: StrictBool | None = None
    password: str | None = Field(
        default=None, min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH
    )
    teams: TeamNames | None = Field(
        default=None, description="replaces the user's teams (absent: unchanged)"
    )


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    username: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None
    teams: list[str] = Field(default_factory=list, description="the teams the user belongs to")


class UserList(BaseModel):
    items: list[UserPublic]
    total: int
