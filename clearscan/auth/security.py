"""Password hashing (argon2id), API bearer tokens (JWT, HS256) and session/CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
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


def create_access_token(*, secret: str, user_id: int, minutes: int) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "typ": "access",
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALG)


def decode_access_token(token: str, *, secret: str) -> int | None:
    """Return the user id of a valid, unexpired access token, else None."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[JWT_ALG], options={"require": ["exp", "sub", "typ"]}
        )
    except jwt.PyJWTError:
        return None
    if claims.get("typ") != "access":
        return None
    try:
        return int(claims["sub"])
    except (TypeError, ValueError):
        return None


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
