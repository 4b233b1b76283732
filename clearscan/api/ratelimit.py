"""Which requests count against the rate limits, and who sends them: the request middleware
asks :meth:`RequestThrottle.check` before a rate-limited request's body is read.

A request counts against its rule's per-address limit (the client address, as the trusted
proxies report it) and, when it carries credentials, its per-user limit: the user id of a valid
bearer token (checked by signature, no database), or of the browser session its cookie names
(one primary-key lookup, cached). Whether the user may do what they ask is decided later by the
route, as for any request."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import cookie_parser
from starlette.types import Scope

from clearscan.api.cookies import SESSION_COOKIE
from clearscan.auth import service as users
from clearscan.auth.security import decode_access_token, session_id
from clearscan.auth.throttle import RateLimited, RateLimits

__all__ = ["RequestThrottle"]


class RequestThrottle:
    """`rules` maps (method, path) to a rule name ("predict", "login"); the limits named
    ``<rule>:address`` and ``<rule>:user`` apply to those requests."""

    SESSION_CACHE = 4096

    def __init__(
        self,
        limits: RateLimits,
        rules: Mapping[tuple[str, str], str],
        *,
        secret: str,
        sessions: sessionmaker[Session],
        session_cookie: str = SESSION_COOKIE,
    ) -> None:
        self.limits = limits
        self.session_cookie = session_cookie  # the name the pages set (CookiePolicy.session)
        self.rules = dict(rules)
        self.secret = secret
        self.sessions = sessions
        self._owners: OrderedDict[str, int | None] = OrderedDict()
        self._lock = threading.Lock()
        # the memory store does no I/O: count on the event loop, no thread hop
        self._inline = limits.store.backend == "memory"

    def applies(self, scope: Scope) -> bool:
        return (scope.get("method", ""), scope.get("path", "")) in self.rules

    async def check(self, scope: Scope) -> RateLimited | None:
        """The refusal of this request (429), or None when it may go on."""
        rule = self.rules.get((scope.get("method", ""), scope.get("path", "")))
        if rule is None:
            return None
        per_user = self.limits.active(f"{rule}:user")
        if not per_user and not self.limits.active(f"{rule}:address"):
            return None
        bearer, cookie = _credentials(scope, self.session_cookie) if per_user else (None, None)
        if self._inline and cookie is None:
            return self._check(rule, scope, bearer, None)
        return await anyio.to_thread.run_sync(self._check, rule, scope, bearer, cookie)

    def _check(
        self, rule: str, scope: Scope, bearer: str | None, cookie: str | None
    ) -> RateLimited | None:
        client = scope.get("client")
        checks = [(f"{rule}:address", str(client[0]) if client else "unknown")]
        user = self._user_id(bearer, cookie)
        if user is not None:
            checks.append((f"{rule}:user", str(user)))
        return self.limits.check(checks)

    def _user_id(self, bearer: str | None, cookie: str | None) -> int | None:
        if bearer:
            return decode_access_token(bearer, secret=self.secret)
        if not cookie:
            return None
        sid = session_id(cookie)  # the cache holds what the table holds, not the token
        with self._lock:
            if sid in self._owners:
                self._owners.move_to_end(sid)
                return self._owners[sid]
        try:
            with self.sessions() as db:
                owner = users.session_owner(db=db, token=cookie)
        except SQLAlchemyError:
            return None  # the route will fail on the database too; count the address only
        with self._lock:
            self._owners[sid] = owner
            while len(self._owners) > self.SESSION_CACHE:
                self._owners.popitem(last=False)
        return owner


def _credentials(scope: Scope, session_cookie: str) -> tuple[str | None, str | None]:
    """(bearer token, session cookie) of the request, as the auth dependencies read them."""
    bearer = cookie = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"cookie":
            cookie = cookie_parser(value.decode("latin-1")).get(session_cookie) or cookie
    return bearer, (None if bearer else cookie)
