"""Row factories for auth service tests (used with the rolled-back `db` fixture)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from clearscan.auth.models import Role, User
from clearscan.auth.security import hash_password

PASSWORD = "correct-horse-battery"
_names = itertools.count()


@functools.cache
def _hash(password: str) -> str:
    return hash_password(password)  # argon2id is slow on purpose: hash each password once


UserFactory = Callable[..., User]


@pytest.fixture
def make_user_row(db: Session) -> UserFactory:
    """Insert a user row directly (no audit event): ``make_user_row(role="admin")``."""

    def make(
        role: Role = Role.clinician,
        *,
        username: str | None = None,
        password: str = PASSWORD,
        disabled: bool = False,
    ) -> User:
        user = User(
            username=username or f"{role.value}{next(_names)}",
            password_hash=_hash(password),
            role=role.value,
            disabled=disabled,
        )
        db.add(user)
        db.flush()
        return user

    return make
