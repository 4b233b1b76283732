"""Cookies and HSTS in production: Secure ``__Host-`` cookies (Path=/, no Domain) read under the
name they were set with, HSTS on every response, and CLEARSCAN_SECURE_COOKIES=never refused.
Development keeps its names and CLEARSCAN_SECURE_COOKIES."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from clearscan.api.cookies import CookiePolicy
from clearscan.api.ratelimit import _credentials
from clearscan.app import create_app
from clearscan.config import ConfigError
from tests.conftest import ADMIN_PASSWORD
from tests.web.test_pages import csrf_of, set_cookies, web_login

SESSION = "__Host-clearscan_session"
LOGIN_CSRF = "__Host-clearscan_login_csrf"


def host_cookie(header: str) -> None:
    """The rules a browser enforces for a __Host- cookie."""
    parts = [p.strip().lower() for p in header.split(";")]
    assert "secure" in parts and "path=/" in parts, header
    assert not any(p.startswith("domain=") for p in parts), header


@pytest.fixture
def production(settings):
    keys = {"pseudonym_key": SecretStr("p" * 40), "audit_key": SecretStr("a" * 40)}
    return settings.model_copy(update={"environment": "production", **keys})


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_production_sets_and_reads_host_prefixed_secure_cookies(production, model_cache, mode):
    app = create_app(
        production.model_copy(update={"secure_cookies": mode}), model_cache=model_cache
    )
    with TestClient(app, base_url="https://testserver") as c:
        page = c.get("/login")
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        host_cookie(set_cookies(page)[LOGIN_CSRF])
        r = web_login(c, "admin", ADMIN_PASSWORD)
        assert r.status_code == 303, r.text
        cookies = set_cookies(r)
        host_cookie(cookies[SESSION])
        assert "httponly" in cookies[SESSION].lower() and "samesite=lax" in cookies[SESSION].lower()
        assert "clearscan_session" not in cookies  # no unprefixed cookie
        # read back under the same name: the pages and the API (GET with the cookie)
        assert c.get("/cases").status_code == 200
        assert c.get("/api/v1/cases").status_code == 200
        health = c.get("/api/v1/health").json()
        assert "version" in health  # the cookie signs the caller in
        token = csrf_of(c.get("/cases").text)
        out = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303
        host_cookie(set_cookies(out)[SESSION])
        assert c.get("/cases", follow_redirects=False).status_code == 303


def test_production_cookies_are_secure_behind_a_tls_proxy(production, model_cache):
    """The proxy speaks plain HTTP to the server: the cookies are Secure all the same."""
    with TestClient(create_app(production, model_cache=model_cache)) as c:
        page = c.get("/login")
        host_cookie(set_cookies(page)[LOGIN_CSRF])
        assert "strict-transport-security" in page.headers


def test_production_ignores_the_unprefixed_cookie(production, model_cache):
    with TestClient(
        create_app(production, model_cache=model_cache), base_url="https://testserver"
    ) as c:
        assert web_login(c, "admin", ADMIN_PASSWORD).status_code == 303
        token = c.cookies.get(SESSION)
        other = TestClient(c.app, base_url="https://testserver")
        other.cookies.set("clearscan_session", token)
        assert other.get("/cases", follow_redirects=False).status_code == 303
        assert other.get("/api/v1/cases").status_code == 401
        other.cookies.set(SESSION, token)
        assert other.get("/cases").status_code == 200


def test_production_refuses_secure_cookies_never(production):
    bad = production.model_copy(update={"secure_cookies": "never"})
    with pytest.raises(ConfigError, match="CLEARSCAN_SECURE_COOKIES=never"):
        bad.check_production()
    with pytest.raises(ConfigError, match="CLEARSCAN_SECURE_COOKIES=never"):
        create_app(bad)


@pytest.mark.parametrize(("mode", "hsts"), [("auto", False), ("always", True), ("never", False)])
def test_development_keeps_its_names_and_hsts_only_with_always(settings, model_cache, mode, hsts):
    app = create_app(settings.model_copy(update={"secure_cookies": mode}), model_cache=model_cache)
    with TestClient(app, base_url="https://testserver") as c:
        page = c.get("/login")
        assert ("strict-transport-security" in page.headers) is hsts
        login_cookie = set_cookies(page)["clearscan_login_csrf"]
        assert "Path=/login" in login_cookie
        assert ("Secure" in login_cookie) is (mode != "never")


def test_rate_limit_reads_the_session_cookie_by_its_policy_name(production, settings):
    scope = {"headers": [(b"cookie", f"{SESSION}=tok; clearscan_session=other".encode())]}
    assert _credentials(scope, CookiePolicy.of(production).session) == (None, "tok")
    assert _credentials(scope, CookiePolicy.of(settings).session) == (None, "other")
