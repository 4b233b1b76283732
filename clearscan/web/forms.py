"""Small parsers for the pages' query strings and forms, kept out of the handlers: redirect
targets, dates, page numbers, pagination links, the login CSRF token and the field types."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import Form, Query


def safe_next(value: str | None) -> str | None:
    """`value` when it is a same-site relative path ("/cases?page=2"), else None.
    Rejects "//host", "/\\host", schemes, control characters and backslashes anywhere."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def parse_date(value: str | None) -> date | None:
    """An ISO date ("2025-11-24") or None for blank; ValueError for anything else."""
    if value is None or not value.strip():
        return None
    return date.fromisoformat(value.strip())


def day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def day_after(d: date) -> datetime:
    return day_start(d) + timedelta(days=1)


def parse_page(value: str | None) -> int:
    try:
        page = int(value or 1)
    except ValueError:
        return 1
    return max(1, min(page, 1_000_000))


@dataclass(frozen=True)
class Pagination:
    page: int
    size: int
    total: int
    params: dict[str, str]  # the active filters, kept in the Previous/Next links

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def first(self) -> int:
        return 0 if self.total == 0 else min(self.offset + 1, self.total)

    @property
    def last(self) -> int:
        return min(self.offset + self.size, self.total)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    def url(self, page: int) -> str:
        query = {k: v for k, v in self.params.items() if v}
        if page > 1:
            query["page"] = str(page)
        return "?" + urlencode(query) if query else "?"

    @property
    def prev_url(self) -> str | None:
        return self.url(self.page - 1) if self.page > 1 else None

    @property
    def next_url(self) -> str | None:
        return self.url(self.page + 1) if self.last < self.total else None


# --- login CSRF: signed double-submit cookie --------------------------------------------------


def new_login_csrf(secret: str) -> str:
    """A random nonce plus its HMAC, so a cookie planted by a sibling host cannot be forged."""
    nonce = secrets.token_urlsafe(24)
    return f"{nonce}.{_sign(secret, nonce)}"


def check_login_csrf(secret: str, cookie: str | None, field: str | None) -> bool:
    if not cookie or not field or not hmac.compare_digest(cookie, field):
        return False
    nonce, _, sig = cookie.partition(".")
    return bool(nonce) and hmac.compare_digest(sig, _sign(secret, nonce))


def _sign(secret: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"login-csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


# --- form and query fields --------------------------------------------------------------------
# Every field is optional text: the handler checks it and shows the form again with a message,
# rather than FastAPI answering a browser with a JSON validation error.
FormStr = Annotated[str | None, Form()]
QueryStr = Annotated[str | None, Query()]
