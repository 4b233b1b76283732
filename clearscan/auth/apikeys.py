"""Service accounts and their API keys. Keyword-only functions that take the DB session and raise
domain errors; the only place that commits API-key rows.

A service account is a row of ``users`` with ``is_service`` set, not a table of its own: it acts
with its role (and its teams) through every check a person's account goes through, and a
disabled account stops its keys at once. It has no usable password (its hash is a marker no
password matches, and password sign-in refuses service accounts) and so no browser session.

A key reads ``csk_<prefix>_<secret>``: the fixed ``csk_`` start makes a leaked key easy to spot
in logs and for secret scanners; the prefix (12 hex digits) finds the row and names the key in
lists and audit events; the secret is 43 base62 characters (about 256 bits). The key is shown
once, when it is made.

Why the stored hash is a plain sha256 and not argon2id: a slow, salted hash protects *low*
entropy secrets (passwords) against guessing after a database leak. An API key is 256 random
bits: no dictionary holds it and no search reaches it, so one sha256 is already infeasible to
invert, and a fast hash lets every request be checked in microseconds instead of the ~50 ms an
argon2id verification costs (a busy PACS router would spend its time hashing). The hash covers
the whole key, prefix included, and is compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth.models import ApiKey, Role, User
from clearscan.auth.service import AuthError, NotAuthenticated, UserExists, get_by_username
from clearscan.errors import Conflict, NotFound, Unprocessable
from clearscan.teams import service as teams

KEY_START = "csk_"
PREFIX_LENGTH = 12  # hex digits: 48 bits, unique per key
SECRET_LENGTH = 43  # base62 characters: about 256 bits
_BASE62 = string.ascii_letters + string.digits
KEY_PATTERN = re.compile(rf"^csk_([0-9a-f]{{{PREFIX_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})$")
LAST_USED_EVERY_SECONDS = 60
"""`last_used_at` is written when it is older than this: a busy router does not write a row per
request, and the time shown is right to the minute."""

NO_PASSWORD = "!service-account"  # noqa: S105 (a marker no argon2 hash verification accepts)
SERVICE_ROLES = (Role.clinician, Role.viewer)


class Scope(StrEnum):
    """What an API key may do. ``predict``: analyses (``POST /predict``) and batches; ``read``:
    GET requests of cases, images, models, datasets, batches, runs and evaluations."""

    predict = "predict"
    read = "read"


class KeyRefused(NotAuthenticated):
    """An unknown, revoked or expired key, or one of a disabled account (401)."""

    title = "API key refused"


class ApiKeyNotFound(NotFound, AuthError):
    pass


class NotAServiceAccount(Conflict, AuthError):
    """API keys are made for service accounts only (409)."""


class InvalidApiKeyRequest(Unprocessable, AuthError):
    """A well-formed request the API-key service cannot carry out as asked (422): an expiry in
    the past, no scope, an admin service account."""


# --- the key itself ---------------------------------------------------------------------------


def new_key() -> tuple[str, str]:
    """A fresh key and its prefix: (``csk_<prefix>_<secret>``, prefix)."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = "".join(secrets.choice(_BASE62) for _ in range(SECRET_LENGTH))
    return f"{KEY_START}{prefix}_{secret}", prefix


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    """Whether a credential is meant as an API key (starts ``csk_``), valid or not."""
    return value.startswith(KEY_START)


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key, else None (never echo a malformed one anywhere)."""
    m = KEY_PATTERN.match(key)
    return m.group(1) if m else None


# --- service accounts -------------------------------------------------------------------------


def create_service_account(
    *,
    db: Session,
    ctx: audit.RequestContext,
    name: str,
    role: Role,
    team_names: Sequence[str] | None = None,
) -> User:
    """A new service account (a user that signs in with API keys only) in the teams `team_names`
    lists (None: the team general; []: none), whose cases it then sees and makes. Audited as
    `user.create` with ``service: true``. UserExists (409); TeamUnknown (422)."""
    if role not in SERVICE_ROLES:
        raise InvalidApiKeyRequest(
            f"a service account's role is clinician or viewer, not {role.value}: API keys never "
            "reach the admin routes"
        )
    if get_by_username(db=db, username=name) is not None:
        raise UserExists(f"user {name!r} already exists")
    user = User(username=name, password_hash=NO_PASSWORD, role=role.value, is_service=True)
    db.add(user)
    db.flush()
    joined = teams.set_memberships(db=db, user_id=user.id, names=team_names)
    audit.append(
        audit.Entry(
            Action.USER_CREATE,
            object_type="user",
            object_id=str(user.id),
            details={"username": name, "role": role.value, "teams": joined, "service": True},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return user


def list_service_accounts(
    *, db: Session, limit: int = 100, offset: int = 0
) -> tuple[Sequence[User], int]:
    where = User.is_service.is_(True)
    total = db.execute(select(func.count(User.id)).where(where)).scalar_one()
    rows = db.execute(select(User).where(where).order_by(User.id).limit(limit).offset(offset))
    return rows.scalars().all(), total


def team_names(*, db: Session, users: Sequence[User]) -> dict[int, list[str]]:
    """Each account's team names, sorted."""
    return teams.names_of(db=db, user_ids=[u.id for u in users])


def require_service_account(*, db: Session, name: str) -> User:
    user = get_by_username(db=db, username=name)
    if user is None:
        raise ApiKeyNotFound(f"service account {name!r} not found")
    if not user.is_service:
        raise NotAServiceAccount(
            f"{name!r} is a person's account; API keys are made for service accounts only "
            "(POST /api/v1/service-accounts)"
        )
    return user


# --- keys ---------------------------------------------------------------------------------------


def create_key(
    *,
    db: Session,
    ctx: audit.RequestContext,
    account: str,
    name: str,
    scopes: Iterable[Scope],
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make a key for the service account named `account`; returns the row and the key (shown
    once: only its hash is kept). Audited as `api_key.create`."""
    chosen = sorted({Scope(s).value for s in scopes})
    if not chosen:
        raise InvalidApiKeyRequest("scopes: name at least one of predict, read")
    now = datetime.now(UTC)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            raise InvalidApiKeyRequest("expires_at: must be in the future")
    user = require_service_account(db=db, name=account)
    key, prefix = new_key()
    while db.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        key, prefix = new_key()  # 48 random bits: practically never
    row = ApiKey(
        user_id=user.id,
        name=name,
        prefix=prefix,
        key_hash=hash_key(key),
        scopes=" ".join(chosen),
        created_at=now,
        created_by=ctx.actor,
        expires_at=expires_at,
    )
    db.add(row)
    db.flush()
    audit.append(
        audit.Entry(
            Action.API_KEY_CREATE,
            object_type="api_key",
            object_id=str(row.id),
            details={
                "account": user.username,
                "name": name,
                "prefix": prefix,
                "scopes": chosen,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return row, key


def get_key(*, db: Session, key_id: int) -> ApiKey:
    row = db.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyNotFound(f"API key {key_id} not found")
    return row


def list_keys(
    *,
    db: Session,
    account: str | None = None,
    include_revoked: bool = True,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[tuple[ApiKey, str]], int]:
    """Keys with their account's name, newest first."""
    where = []
    if account is not None:
        where.append(User.username == account)
    if not include_revoked:
        where.append(ApiKey.revoked_at.is_(None))
    base = select(ApiKey, User.username).join(User, User.id == ApiKey.user_id).where(*where)
    total = db.execute(select(func.count()).select_from(base.subquery())).scalar_one()
    rows = db.execute(base.order_by(ApiKey.id.desc()).limit(limit).offset(offset)).all()
    return [(key, account) for key, account in rows], total


def revoke_key(*, db: Session, ctx: audit.RequestContext, key_id: int) -> tuple[ApiKey, str]:
    """Revoke a key: refused from the next request on. Returns the row and its account's name.
    Revoking a revoked key changes nothing (and is not audited again)."""
    row = get_key(db=db, key_id=key_id)
    owner = db.get(User, row.user_id)
    account = owner.username if owner is not None else ""
    if row.revoked_at is not None:
        return row, account
    row.revoked_at = datetime.now(UTC)
    audit.append(
        audit.Entry(
            Action.API_KEY_REVOKE,
            object_type="api_key",
            object_id=str(row.id),
            details={"account": account, "name": row.name, "prefix": row.prefix},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return row, account


def authenticate(*, db: Session, key: str, now: datetime | None = None) -> tuple[User, ApiKey]:
    """The service account and key row of a valid key; KeyRefused (401) for an unknown, revoked
    or expired key or a disabled account. Records the time of use (committed) when the stored
    one is older than :data:`LAST_USED_EVERY_SECONDS`."""
    now = now or datetime.now(UTC)
    prefix = prefix_of(key)
    row = db.scalar(select(ApiKey).where(ApiKey.prefix == prefix)) if prefix else None
    # the hash is compared even when no row matched, so timing tells nothing
    stored = row.key_hash if row is not None else hash_key(f"{KEY_START}none")
    if not hmac.compare_digest(stored, hash_key(key)) or row is None:
        raise KeyRefused("unknown API key")
    if row.revoked_at is not None:
        raise KeyRefused("this API key was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise KeyRefused("this API key has expired")
    user = db.get(User, row.user_id)
    if user is None or not user.is_service or user.disabled:
        raise KeyRefused("this API key's service account is disabled")
    _touch(db=db, row=row, now=now)
    return user, row


def _touch(*, db: Session, row: ApiKey, now: datetime) -> None:
    """Set `last_used_at` when it is missing or older than the interval: one conditional UPDATE,
    so several processes seeing the same stale time write it once between them."""
    due = now - timedelta(seconds=LAST_USED_EVERY_SECONDS)
    if row.last_used_at is not None and row.last_used_at > due:
        return
    db.execute(
        update(ApiKey)
        .where(
            ApiKey.id == row.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= due),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    set_committed_value(row, "last_used_at", now)  # as stored: no second write
