"""The browser's cookies: their names, flags and HSTS, from the settings, in one place so a cookie
is always read under the name it was set with.

Development keeps `CLEARSCAN_SECURE_COOKIES` as it is: `auto` marks cookies Secure over HTTPS,
`always` marks them Secure and sends HSTS, `never` does neither. Production
(`CLEARSCAN_ENVIRONMENT=production`) always marks them Secure, sends HSTS and names them with the
``__Host-`` prefix (Path=/, no Domain), so a sibling host cannot plant or overwrite them;
`never` is refused at start-up (:meth:`clearscan.config.Settings.check_production`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from clearscan.config import Settings

SESSION_COOKIE = "clearscan_session"
LOGIN_CSRF_COOKIE = "clearscan_login_csrf"
HOST_PREFIX = "__Host-"
HSTS = "max-age=31536000"

__all__ = ["HOST_PREFIX", "HSTS", "LOGIN_CSRF_COOKIE", "SESSION_COOKIE", "CookiePolicy"]


@dataclass(frozen=True)
class CookiePolicy:
    production: bool
    mode: Literal["auto", "always", "never"]

    @classmethod
    def of(cls, settings: Settings) -> CookiePolicy:
        return cls(production=settings.environment == "production", mode=settings.secure_cookies)

    def _name(self, base: str) -> str:
        return HOST_PREFIX + base if self.production else base

    @property
    def session(self) -> str:
        """The session cookie's name."""
        return self._name(SESSION_COOKIE)

    @property
    def login_csrf(self) -> str:
        """The login form's double-submit cookie's name."""
        return self._name(LOGIN_CSRF_COOKIE)

    @property
    def login_csrf_path(self) -> str:
        # a __Host- cookie must have Path=/
        return "/" if self.production else "/login"

    @property
    def hsts(self) -> bool:
        """Whether every response carries Strict-Transport-Security."""
        return self.production or self.mode == "always"

    def secure(self, request: Request) -> bool:
        if self.production or self.mode == "always":
            return True
        return self.mode == "auto" and request.url.scheme == "https"

    def set_session(self, response: Response, request: Request, token: str, max_age: int) -> None:
        response.set_cookie(
            self.session,
            token,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure(request),
        )

    def clear_session(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            self.session, path="/", httponly=True, samesite="lax", secure=self.secure(request)
        )

    def set_login_csrf(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(
            self.login_csrf,
            token,
            max_age=3600,
            path=self.login_csrf_path,
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def clear_login_csrf(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            self.login_csrf,
            path=self.login_csrf_path,
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )
