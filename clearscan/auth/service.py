"""Users and sessions. Keyword-only functions that take the DB session and raise domain errors."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth.models import Role, User, UserSession
from clearscan.auth.security import (
    hash_password,
    needs_rehash,
    new_session_token,
    session_id,
    verify_password,
)
from clearscan.auth.throttle import LoginLimiter
from clearscan.errors import ClearScanError, Conflict, Forbidden, NotFound
from clearscan.teams import service as teams


class AuthError(ClearScanError):
    """Domain errors of the auth package (400 unless a subclass says otherwise)."""

    headers: dict[str, str] | None = None  # extra reply headers (WWW-Authenticate, Retry-After)


class NotAuthenticated(AuthError):
    """No valid credentials came with the request (401)."""

    status_code = 401
    title = "Sign-in required"
    headers = {"WWW-Authenticate": "Bearer"}


class NotPermitted(Forbidden, AuthError):
    """The signed-in user's role may not do this (403)."""


class UserExists(Conflict, AuthError):
    pass


class UserNotFound(NotFound, AuthError):
    pass


class ServiceAccountRole(Conflict, AuthError):
    """A service account may not be made an admin."""


class LastAdmin(Conflict, AuthError):
    pass


class LoginFailed(NotAuthenticated):
    """Wrong username or password, or a disabled account (401)."""

    title = "Sign-in failed"


class LoginThrottled(AuthError):
    """Too many failed logins for this username from this address: back off (429)."""

    status_code = 429
    title = "Too many attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


def get(*, db: Session, user_id: int) -> User | None:
    return db.get(User, user_id)


def require(*, db: Session, user_id: int) -> User:
    """The user with this id; UserNotFound (404) when there is none."""
    user = db.get(User, user_id)
    if user is None:
        raise UserNotFound(f"user {user_id} not found")
    return user


def get_by_username(*, db: Session, username: str) -> User | None:
    return db.execute(select(User).where(User.username == username)).scalar_one_or_none()


def list_users(*, db: Session, limit: int = 100, offset: int = 0) -> tuple[Sequence[User], int]:
    total = db.execute(select(func.count(User.id))).scalar_one()
    rows = db.execute(select(User).order_by(User.id).limit(limit).offset(offset)).scalars()
    return rows.all(), total


def team_names(*, db: Session, users: Sequence[User]) -> dict[int, list[str]]:
    """Each user's team names, sorted, by user id."""
    return teams.names_of(db=db, user_ids=[u.id for u in users])


def create(
    *,
    db: Session,
    ctx: audit.RequestContext,
    username: str,
    password: str,
    role: Role,
    team_names: Sequence[str] | None = None,
) -> User:
    """A new user in the teams `team_names` lists (None: the team general; []: none).
    UserExists (409); TeamUnknown (422) naming a team that does not exist."""
    if get_by_username(db=db, username=username) is not None:
        raise UserExists(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role.value)
    db.add(user)
    db.flush()
    joined = teams.set_memberships(db=db, user_id=user.id, names=team_names)
    audit.append(
        audit.Entry(
            Action.USER_CREATE,
            object_type="user",
            object_id=str(user.id),
            details={
                "username": username,
                "role": role.value,
                **({"teams": joined} if team_names is not None else {}),
            },
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return user


def update(
    *,
    db: Session,
    ctx: audit.RequestContext,
    user: User,
    role: Role | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    team_names: Sequence[str] | None = None,
) -> User:
    """Change what is given (None: unchanged); `team_names` replaces the user's teams."""
    changes: dict[str, object] = {}
    demotes_admin = user.role == Role.admin.value and (
        (role is not None and role != Role.admin) or disabled is True
    )
    if demotes_admin and not user.disabled and _active_admins(db) <= 1:
        raise LastAdmin("cannot demote or disable the last active admin")
    if user.is_service and role is Role.admin:
        # its keys could not reach admin routes, but as an admin it would see every team's rows
        raise ServiceAccountRole(
            f"{user.username} is a service account: its role is clinician or viewer, not admin"
        )
    if role is not None and role.value != user.role:
        changes["role"] = [user.role, role.value]
        user.role = role.value
    if disabled is not None and disabled != user.disabled:
        changes["disabled"] = disabled
        user.disabled = disabled
        if disabled:
            revoke_credentials(db=db, user=user)
    if password is not None:
        user.password_hash = hash_password(password)
        changes["password"] = "changed"  # noqa: S105 (audit note, not a password)
        revoke_credentials(db=db, user=user)
    if team_names is not None:
        before = teams.names_of(db=db, user_ids=[user.id])[user.id]
        after = teams.set_memberships(db=db, user_id=user.id, names=team_names)
        if after != before:
            changes["teams"] = [before, after]
    audit.append(
        audit.Entry(
            Action.USER_UPDATE,
            object_type="user",
            object_id=str(user.id),
            details={"username": user.username, **changes},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return user


def _active_admins(db: Session) -> int:
    q = select(func.count(User.id)).where(User.role == Role.admin.value, User.disabled.is_(False))
    return db.execute(q).scalar_one()


def authenticate(*, db: Session, username: str, password: str) -> User | None:
    """Return the user when the password matches and the account is enabled. A service account
    never signs in with a password (even one an admin set): it uses API keys only."""
    user = get_by_username(db=db, username=username)
    ok = verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled or user.is_service:
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = datetime.now(UTC)
    return user


def login(
    *,
    db: Session,
    ctx: audit.RequestContext,
    limiter: LoginLimiter,
    username: str,
    password: str,
    via: str,
) -> User:
    """Check throttling and the password and audit the attempt (committed). LoginThrottled (429)
    or LoginFailed (401) when refused."""
    user = _check_login(
        db=db, ctx=ctx, limiter=limiter, username=username, password=password, via=via
    )
    db.commit()
    return user


def sign_in(
    *,
    db: Session,
    ctx: audit.RequestContext,
    limiter: LoginLimiter,
    username: str,
    password: str,
    minutes: int,
    previous_token: str | None = None,
) -> tuple[User, str]:
    """A browser sign-in: check the password as :func:`login` does, end the previous session
    (a new sign-in replaces it) and start one of `minutes`; the login event and the session are
    committed together. Returns the user and the new session token."""
    user = _check_login(
        db=db, ctx=ctx, limiter=limiter, username=username, password=password, via="web"
    )
    if previous_token:
        end_session(db=db, token=previous_token)
    token, _ = start_session(db=db, user=user, minutes=minutes)
    db.commit()
    return user, token


def sign_out(*, db: Session, ctx: audit.RequestContext, user: User, token: str) -> None:
    """End a browser session and audit the logout."""
    end_session(db=db, token=token)
    audit.append(
        audit.Entry(
            Action.AUTH_LOGOUT,
            object_type="user",
            object_id=str(user.id),
            details={"via": "web"},
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()


def _check_login(
    *,
    db: Session,
    ctx: audit.RequestContext,
    limiter: LoginLimiter,
    username: str,
    password: str,
    via: str,
) -> User:
    """Back-off and password check; a refusal is audited and committed at once, a success is
    added to the open transaction for the caller to commit.

    Failures are counted per (username, address) pair: a pair in its back-off is refused (429)
    without a look at the password, unless it signed in successfully before: then the right
    password is let in and a wrong one is refused (429) and counted."""
    pair = limiter.pair(username, ctx.client_addr)
    wait = limiter.wait(pair)
    known = wait > 0 and limiter.known(pair)
    if wait > 0 and not known:
        _audit_refusal(db=db, ctx=ctx, limiter=limiter, username=username, via=via, throttled=True)
        raise LoginThrottled(_seconds(wait))
    user = authenticate(db=db, username=username, password=password)
    if user is None:
        limiter.failed(pair)
        _audit_refusal(
            db=db, ctx=ctx, limiter=limiter, username=username, via=via, throttled=wait > 0
        )
        if wait > 0:
            raise LoginThrottled(_seconds(limiter.wait(pair)))
        raise LoginFailed("incorrect username or password")
    limiter.succeeded(pair, keep_failures=known)
    audit.append(
        audit.Entry(
            Action.AUTH_LOGIN,
            actor=user.username,
            object_type="user",
            object_id=str(user.id),
            details={"via": via},
        ),
        db=db,
        ctx=ctx,
    )
    return user


UNKNOWN_USER = "unknown user"


def _audit_refusal(
    *,
    db: Session,
    ctx: audit.RequestContext,
    limiter: LoginLimiter,
    username: str,
    via: str,
    throttled: bool,
) -> None:
    """Audit (and commit) a refused login. A username that names an account is recorded as
    that account; any other text is not recorded as typed (it may be a patient identifier typed
    into the wrong field): the actor is "unknown user" and the details carry a keyed hash of it,
    so repeated attempts with one name can be told apart without revealing it."""
    user = get_by_username(db=db, username=username)
    details: dict[str, object] = {"via": via}
    if user is None:
        details["username_hmac"] = limiter.digest(f"username\0{username}")
    audit.record(
        audit.Entry(
            Action.AUTH_LOGIN,
            outcome="throttled" if throttled else "failure",
            actor=user.username if user is not None else UNKNOWN_USER,
            object_type="user" if user is not None else None,
            object_id=str(user.id) if user is not None else None,
            details=details,
        ),
        db=db,
        ctx=ctx,
    )


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def ensure_admin(*, db: Session, password: str | None) -> str | None:
    """Create the `admin` user when no user exists. Returns the generated password, if any."""
    if db.execute(select(func.count(User.id))).scalar_one() > 0:
        return None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    user = User(username="admin", password_hash=hash_password(password), role=Role.admin.value)
    db.add(user)
    db.flush()
    teams.set_memberships(db=db, user_id=user.id, names=None)
    audit.append(
        audit.Entry(
            Action.USER_CREATE,
            object_type="user",
            object_id=str(user.id),
            details={"username": "admin", "role": "admin", "bootstrap": True},
        ),
        db=db,
        ctx=audit.RequestContext(actor="system"),
    )
    db.commit()
    return generated


# --- browser sessions -------------------------------------------------------------------------


def start_session(*, db: Session, user: User, minutes: int) -> tuple[str, UserSession]:
    token, sid = new_session_token()
    now = datetime.now(UTC)
    row = UserSession(
        id=sid, user_id=user.id, created_at=now, expires_at=now + timedelta(minutes=minutes)
    )
    db.add(row)
    return token, row


def resolve_session(*, db: Session, token: str) -> tuple[User, UserSession] | None:
    row = db.get(UserSession, session_id(token))
    if row is None or row.revoked_at is not None or row.expires_at <= datetime.now(UTC):
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return user, row


def session_owner(*, db: Session, token: str) -> int | None:
    """The user id a session token belongs to (valid or not), for counting requests per user;
    None for a token no session has."""
    return db.scalar(select(UserSession.user_id).where(UserSession.id == session_id(token)))


def end_session(*, db: Session, token: str) -> None:
    row = db.get(UserSession, session_id(token))
    if row is not None and row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)


def revoke_credentials(*, db: Session, user: User) -> None:
    """End every browser session of `user` and revoke every API token issued to them so far
    (their `token_version` moves on): a password change, or disabling the user."""
    user.token_version = (user.token_version or 0) + 1
    revoke_sessions(db=db, user_id=user.id)


def revoke_sessions(*, db: Session, user_id: int) -> None:
    now = datetime.now(UTC)
    rows = db.execute(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    ).scalars()
    for row in rows:
        row.revoked_at = now
