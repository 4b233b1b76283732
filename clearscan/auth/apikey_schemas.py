"""Pydantic in/out models for service accounts and API keys. No reply model holds the key except
:class:`ApiKeyCreated`, the one reply that shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from clearscan.auth.apikeys import Scope
from clearscan.auth.models import ApiKey, User
from clearscan.auth.schemas import USERNAME_PATTERN, TeamNames

KEY_NAME_PATTERN = r"^[A-Za-z0-9 _.:@()/-]{1,64}$"


class ServiceAccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=USERNAME_PATTERN, description="the account's user name")
    role: Literal["clinician", "viewer"] = Field(
        default="viewer", description="clinician to let its keys analyse; viewer to read only"
    )
    teams: TeamNames | None = Field(
        default=None, description="the teams it acts for (default: the team general)"
    )


class ServiceAccountPublic(BaseModel):
    id: int
    name: str
    role: str
    disabled: bool
    created_at: datetime
    teams: list[str] = Field(default_factory=list, description="the teams it acts for")

    @classmethod
    def of(cls, user: User, teams: list[str]) -> ServiceAccountPublic:
        return cls(
            id=user.id,
            name=user.username,
            role=user.role,
            disabled=user.disabled,
            created_at=user.created_at,
            teams=teams,
        )


class ServiceAccountList(BaseModel):
    items: list[ServiceAccountPublic]
    total: int


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: str = Field(pattern=USERNAME_PATTERN, description="the service account's name")
    name: str = Field(pattern=KEY_NAME_PATTERN, description="what the key is for, e.g. `pacs-1`")
    scopes: list[Scope] = Field(min_length=1, max_length=2, description="`predict`, `read`")
    expires_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 date-time with an offset; the key stops working then"
    )


class ApiKeyPublic(BaseModel):
    """A key as lists show it: never the key itself."""

    id: int
    account: str
    name: str
    prefix: str = Field(description="the key's public part: `csk_<prefix>_...`")
    scopes: list[Scope]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey, account: str) -> ApiKeyPublic:
        return cls(
            id=row.id,
            account=account,
            name=row.name,
            prefix=row.prefix,
            scopes=[Scope(s) for s in sorted(row.scope_set)],
            created_at=row.created_at,
            created_by=row.created_by,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the key, shown this once: only its hash is kept")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
    total: int
