"""The sign-in page."""

from __future__ import annotations

from dataclasses import dataclass

from clearscan.web.present.page import Page


@dataclass(frozen=True, kw_only=True)
class LoginPage(Page):
    template = "login.html"
    login_csrf: str  # the signed nonce also set as the login CSRF cookie
    next_url: str  # where to go after signing in ("" for the role's start page)
    username: str = ""
    error: str | None = None
