"""The audit key: the secret the chain's HMACs are made with, kept outside the database.

A keyring holds the current key (new events) and the previous ones (events written before a key
rotation still verify). Each key is known by a public id (a fingerprint of the key, never the key)
stored on every event it signed.

Which keyring a session uses is looked up from the database it is bound to: the app, the CLI and
the worker register their database URL's keyring at start-up (``install``); a process that talks
to several databases (tests) gets each one's own keyring. ``set_default`` names a keyring for
databases nobody registered (library use and tests).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from clearscan.config import Settings

__all__ = [
    "AuditKey",
    "AuditKeyMissing",
    "Keyring",
    "install",
    "keyring_for",
    "register",
    "set_default",
]


class AuditKeyMissing(RuntimeError):
    """No audit key is known for this database: the chain cannot be written or checked."""


@dataclass(frozen=True)
class AuditKey:
    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (16 hex digits): which key signed an event."""
        return hashlib.sha256(b"clearscan-audit-key-id\x00" + self.secret).hexdigest()[:16]

    def mac(self, purpose: bytes, message: bytes) -> str:
        """HMAC-SHA256 of `message` under a sub-key for `purpose` (chain, anchor...): a MAC made
        for one purpose never passes for another."""
        sub = hmac.new(self.secret, b"clearscan-audit\x00" + purpose, hashlib.sha256).digest()
        return hmac.new(sub, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Keyring:
    current: AuditKey
    previous: tuple[AuditKey, ...] = ()

    @classmethod
    def of(cls, current: str | bytes, previous: Iterable[str | bytes] = ()) -> Keyring:
        return cls(_key(current), tuple(_key(p) for p in previous))

    def get(self, key_id: str) -> AuditKey | None:
        for k in (self.current, *self.previous):
            if k.key_id == key_id:
                return k
        return None


def _key(value: str | bytes) -> AuditKey:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) < 32:
        raise ValueError("an audit key needs at least 32 characters")
    return AuditKey(raw)


_lock = threading.Lock()
_by_url: dict[str, Keyring] = {}
_default: Keyring | None = None


def _url_of(bind: Engine | Connection) -> str:
    return bind.engine.url.render_as_string(hide_password=True)


def register(bind: Engine | str, keyring: Keyring) -> None:
    """Sessions on this database (engine or URL) sign and check with `keyring`."""
    from sqlalchemy.engine import make_url

    url = _url_of(bind) if isinstance(bind, Engine) else make_url(bind).render_as_string(True)
    with _lock:
        _by_url[url] = keyring


def set_default(keyring: Keyring | None) -> None:
    """The keyring of databases no one registered (None: such databases have none)."""
    global _default
    with _lock:
        _default = keyring


def keyring_for(db: Session) -> Keyring:
    bind = db.get_bind()
    if not isinstance(bind, Engine | Connection):  # pragma: no cover (no such binds here)
        raise AuditKeyMissing("the session is not bound to a database")
    found = _by_url.get(_url_of(bind), _default)
    if found is None:
        raise AuditKeyMissing(
            "no audit key is configured for this database (CLEARSCAN_AUDIT_KEY, or the key file "
            "in the data dir): start through clearscan's bootstrap, which installs it"
        )
    return found


def from_settings(settings: Settings) -> Keyring:
    """The keyring the settings name (see ``Settings.resolved_audit_key``)."""
    return Keyring.of(
        settings.resolved_audit_key,
        [k.get_secret_value() for k in settings.audit_previous_keys],
    )


def install(settings: Settings) -> Keyring:
    """Register the settings' keyring for their database; return it."""
    keyring = from_settings(settings)
    register(settings.sqlalchemy_url, keyring)
    return keyring
