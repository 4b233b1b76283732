"""Users, server-side UI sessions, and the counters of login throttling and rate limits."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column

from clearscan.db.base import Base, UTCDateTime, utcnow


class Role(StrEnum):
    admin = "admin"
    clinician = "clinician"
    viewer = "viewer"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.viewer.value)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # carried by every API token as its `ver` claim; a password change or disabling the user
    # increments it, so every token issued before stops working
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a service account (a PACS router, a script): no password sign-in, no browser session;
    # it authenticates with API keys only (clearscan.auth.apikeys)
    is_service: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


class UserSession(Base):
    """A browser session. The cookie holds a random token; the table holds its sha256."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RateLimitState(Base):
    """One request-rate counter shared by the API processes (the `database` throttle store):
    the generic cell rate algorithm keeps one number per key, its theoretical arrival time.
    A row whose `tat` has passed means the same as no row and may be deleted."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)  # "predict:user:42"
    # Unix time. Not indexed: updates stay in place (PostgreSQL HOT); the once-a-minute sweep
    # of spent rows scans a table of the keys seen in the last minute or so.
    tat: Mapped[float] = mapped_column(Float)


class LoginFailure(Base):
    """A failed login counted against a client address or a username (sliding window)."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128))  # "ip:10.0.0.1", "user:alice"
    at: Mapped[float] = mapped_column(Float, index=True)  # Unix time

    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)


class KnownLoginAddress(Base):
    """A (username, client address) pair that signed in successfully, as a keyed hash, until
    `until`: the right password from it is never refused by the failed-login back-off."""

    __tablename__ = "login_known_addresses"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    until: Mapped[float] = mapped_column(Float, index=True)  # Unix time


class ApiKey(Base):
    """An API key of a service account. The key itself (``csk_<prefix>_<secret>``) is shown once;
    the table holds its public `prefix` (to find the row and to name the key in lists and logs)
    and the sha256 of the whole key (see clearscan.auth.apikeys for why a fast hash is right)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    scopes: Mapped[str] = mapped_column(String(64))  # space-separated, e.g. "predict read"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # written at most once a minute per key (apikeys.LAST_USED_EVERY_SECONDS)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())
