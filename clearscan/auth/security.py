"""Password hashing (argon2id), API bearer tokens (JWT, HS256) and session/CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

# argon2id, RFC 9106's second recommended option (t=3, 64 MiB, p=4): above OWASP's minimum
# (t=2, 19 MiB) and the library's own default.
PARAMETERS = profiles.RFC_9106_LOW_MEMORY
_hasher = PasswordHasher.from_parameters(PARAMETERS)
# A fixed hash to verify against when the user does not exist, so timing does not reveal it.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
JWT_ALG = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True)
class AccessClaims:
    """What a valid access token says: its user and the user's token version when issued."""

    user_id: int
    version: int


def create_access_token(*, secret: str, user_id: int, minutes: int, version: int = 0) -> str:
    """A signed access token; `version` is the user's `token_version` (a password change or
    disabling the user increments it, and tokens of an older version are refused)."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "typ": "access",
        "ver": version,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALG)


def read_access_token(token: str, *, secret: str) -> AccessClaims | None:
    """The claims of a valid, unexpired access token, else None. A token without `ver` (issued
    before versions existed) is version 0."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[JWT_ALG], options={"require": ["exp", "sub", "typ"]}
        )
    except jwt.PyJWTError:
        return None
    if claims.get("typ") != "access":
        return None
    version = claims.get("ver", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    try:
        return AccessClaims(int(claims["sub"]), version)
    except (TypeError, ValueError):
        return None


def decode_access_token(token: str, *, secret: str) -> int | None:
    """The user id of a valid, unexpired access token, else None (whether the token is still
    current for its user is :func:`read_access_token`'s version, checked against the user)."""
    claims = read_access_token(token, secret=secret)
    return claims.user_id if claims else None


def new_session_token() -> tuple[str, str]:
    """Return (token for the cookie, sha256 id for the table)."""
    token = secrets.token_urlsafe(32)
    return token, session_id(token)


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(*, secret: str, session_token_id: str) -> str:
    """CSRF token bound to the session (synchroniser token, derived, nothing stored)."""
    return hmac.new(secret.encode(), f"csrf:{session_token_id}".encode(), "sha256").hexdigest()


def check_csrf(*, secret: str, session_token_id: str, token: str | None) -> bool:
    if not token:
        return False
    return hmac.compare_digest(csrf_token(secret=secret, session_token_id=session_token_id), token)
