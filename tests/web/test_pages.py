"""The server-rendered pages through the ASGI app: sign-in, sessions, roles, CSRF, the analysis
form, the case page, reviews, administration and security headers."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from clearscan.app import create_app
from clearscan.audit import service as audit_service
from clearscan.audit.service import ChainReport, list_events
from clearscan.web.forms import check_login_csrf, new_login_csrf, safe_next
from clearscan.web.templating import markdown
from tests.conftest import ADMIN_PASSWORD, PASSWORD, chest_like, dicom_bytes, png_bytes

CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_names = itertools.count()
Browser = Callable[[str], TestClient]
DASH = "\u2013"


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no csrf_token field on the page"
    return m.group(1)


def web_login(c: TestClient, username: str, password: str, next_url: str | None = None) -> Response:
    page = c.get("/login" + (f"?next={quote(next_url)}" if next_url else ""))
    assert page.status_code == 200
    data = {"username": username, "password": password, "csrf_token": csrf_of(page.text)}
    if next_url:
        data["next"] = next_url
    return c.post("/login", data=data, follow_redirects=False)


def set_cookies(r: Response) -> dict[str, str]:
    """name -> full Set-Cookie header."""
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


def audit_items(client: TestClient, headers: dict[str, str], **filters: str) -> list[dict]:
    r = client.get("/api/v1/audit", headers=headers, params=filters)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def case_total(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/api/v1/cases", headers=headers).json()["total"]


@pytest.fixture
def new_user(client: TestClient, admin_headers: dict[str, str]) -> Callable[[str], str]:
    def make(role: str) -> str:
        name = f"web-{role}-{next(_names)}"
        r = client.post(
            "/api/v1/users",
            headers=admin_headers,
            json={"username": name, "password": PASSWORD, "role": role},
        )
        assert r.status_code == 201, r.text
        return name

    return make


@pytest.fixture
def browser(app: FastAPI, new_user: Callable[[str], str]) -> Iterator[Browser]:
    """A signed-in client (own cookie jar) per role."""
    opened: list[TestClient] = []

    def make(role: str) -> TestClient:
        name, password = (
            ("admin", ADMIN_PASSWORD) if role == "admin" else (new_user(role), PASSWORD)
        )
        c = TestClient(app, raise_server_exceptions=False)
        opened.append(c)
        r = web_login(c, name, password)
        assert r.status_code == 303, r.text
        c.headers["x-test-user"] = name
        return c

    yield make
    for c in opened:
        c.close()


def analyze(c: TestClient, files: list[tuple[str, bytes]], **form: str) -> Response:
    token = csrf_of(c.get("/analyze").text)
    parts = [("file", (n, data, "application/octet-stream")) for n, data in files]
    return c.post(
        "/analyze",
        data={"csrf_token": token, "explain": "on", **form},
        files=parts,
        follow_redirects=False,
    )


# --- sign in ----------------------------------------------------------------------------------


def test_login_sets_httponly_samesite_session_cookie(client, admin_headers):
    page = client.get("/login")
    login_cookie = set_cookies(page)["clearscan_login_csrf"]
    assert "HttpOnly" in login_cookie and "samesite=strict" in login_cookie.lower()
    r = web_login(client, "admin", ADMIN_PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/analyze"
    cookie = set_cookies(r)["clearscan_session"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Path=/" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie
    assert client.get("/cases").status_code == 200
    (event,) = audit_items(client, admin_headers, action="auth.login", actor="admin")[:1]
    assert event["outcome"] == "success" and event["details"] == {"via": "web"}


@pytest.mark.parametrize(
    ("mode", "scheme", "secure"),
    [
        ("auto", "http", False),
        ("auto", "https", True),
        ("always", "http", True),
        ("never", "https", False),
    ],
)
def test_session_cookie_secure_flag(settings, mode, scheme, secure):
    app = create_app(settings.model_copy(update={"secure_cookies": mode}))
    with TestClient(app, base_url=f"{scheme}://testserver") as c:
        page = c.get("/login")
        # httpx keeps a Secure cookie from going over http; the server set it, send it anyway.
        c.cookies.set("clearscan_login_csrf", csrf_of(page.text), path="/login")
        r = c.post(
            "/login",
            data={
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "csrf_token": csrf_of(page.text),
            },
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert ("Secure" in set_cookies(r)["clearscan_session"]) is secure


def test_wrong_password_shows_error_and_audits_failure(client, admin_headers):
    r = web_login(client, "admin", "not-the-password")
    assert r.status_code == 400
    assert "Incorrect username or password" in r.text
    assert "clearscan_session" not in set_cookies(r)
    event = audit_items(client, admin_headers, action="auth.login")[0]
    assert event["outcome"] == "failure" and event["actor"] == "admin"
    assert event["details"] == {"via": "web"}


@pytest.mark.parametrize("how", ["wrong-field", "no-cookie", "forged-cookie"])
def test_login_csrf_mismatch_rejected(app, client, admin_headers, how):
    page = client.get("/login")
    token = csrf_of(page.text)
    data = {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token}
    if how == "wrong-field":
        data["csrf_token"] = new_login_csrf("test-secret-key-that-is-long-enough-0123456789")
    elif how == "no-cookie":
        client.cookies.clear()
    else:  # a cookie and field that match but were not signed with the server's secret
        forged = "nonce." + "0" * 64
        client.cookies.set("clearscan_login_csrf", forged, path="/login")
        data["csrf_token"] = forged
    r = client.post("/login", data=data, follow_redirects=False)
    assert r.status_code == 403
    assert "could not be verified" in r.text
    assert "clearscan_session" not in set_cookies(r)
    assert not audit_items(client, admin_headers, action="auth.login", actor="admin")[1:]


def test_login_csrf_helpers():
    token = new_login_csrf("s" * 40)
    assert check_login_csrf("s" * 40, token, token)
    assert not check_login_csrf("t" * 40, token, token)
    assert not check_login_csrf("s" * 40, token, token + "x")
    assert not check_login_csrf("s" * 40, None, token)


def test_login_throttled_after_repeated_failures(settings):
    """Failures back off their (username, address) pair; the right password from an address
    that signed in before is let in even then."""
    app = create_app(settings.model_copy(update={"login_max_failures": 2}))
    with TestClient(app) as c:
        for _ in range(2):
            assert web_login(c, "admin", "wrong-password-x").status_code == 400
        r = web_login(c, "admin", ADMIN_PASSWORD)  # never signed in from here: backs off
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert "Too many failed sign-in attempts" in r.text
        with app.state.clearscan.sessions() as db:
            rows, _ = list_events(db=db, action="auth.login")
            assert rows[0].outcome == "throttled" and rows[0].details == {"via": "web"}
        time.sleep(1.1)
        assert web_login(c, "admin", ADMIN_PASSWORD).status_code == 303  # remembered now
        c.cookies.clear()
        for _ in range(2):
            assert web_login(c, "admin", "wrong-password-x").status_code == 400
        assert web_login(c, "admin", "wrong-password-x").status_code == 429
        assert web_login(c, "admin", ADMIN_PASSWORD).status_code == 303


def test_login_next_only_same_site_paths(client):
    cases = [
        ("/cases?page=2", "/cases?page=2"),
        ("//evil.example", "/analyze"),
        ("https://evil.example/", "/analyze"),
        ("/\\evil.example", "/analyze"),
        ("javascript:alert(1)", "/analyze"),
        ("/logout", "/analyze"),
    ]
    for target, expected in cases:
        client.cookies.clear()
        r = web_login(client, "admin", ADMIN_PASSWORD, next_url=target)
        assert r.status_code == 303 and r.headers["location"] == expected, target


def test_safe_next():
    assert safe_next("/cases/x?y=1") == "/cases/x?y=1"
    for bad in ("", None, "cases", "//x", "/\\x", "/a\\b", "/a\nb", "http://x/", "\t/x"):
        assert safe_next(bad) is None


def test_new_sign_in_ends_the_previous_session(app, browser):
    viewer = browser("viewer")
    fresh = TestClient(app, raise_server_exceptions=False)
    token = csrf_of(fresh.get("/login").text)
    fresh.cookies.set("clearscan_session", viewer.cookies["clearscan_session"])
    data = {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token}
    assert fresh.post("/login", data=data, follow_redirects=False).status_code == 303
    assert viewer.get("/cases", follow_redirects=False).status_code == 303


def test_login_page_redirects_when_signed_in(browser):
    c = browser("viewer")
    r = c.get("/login", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/cases"


# --- sessions, roles, CSRF ------------------------------------------------------------------

GET_PAGES = [
    "/analyze",
    "/cases",
    "/models",
    "/models/pneumonia-cxr",
    "/admin/users",
    "/admin/audit",
]


def test_pages_redirect_to_login_without_session(client):
    for path in [*GET_PAGES, "/cases?label=normal", "/cases/some-id"]:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == f"/login?next={quote(path, safe='')}"
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    # a POST without a session changes nothing and goes to the sign-in page
    r = client.post(
        "/analyze", files=[("file", ("x.png", png_bytes(), "image/png"))], follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_invalid_session_cookie_redirects(client):
    client.cookies.set("clearscan_session", "not-a-session")
    r = client.get("/cases", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("admin", set(GET_PAGES)),
        ("clinician", {"/analyze", "/cases", "/models", "/models/pneumonia-cxr"}),
        ("viewer", {"/cases", "/models", "/models/pneumonia-cxr"}),
    ],
)
def test_pages_by_role(browser, client, admin_headers, role, allowed):
    c = browser(role)
    for path in GET_PAGES:
        r = c.get(path, follow_redirects=False)
        want = 200 if path in allowed else 403
        assert r.status_code == want, (role, path, r.status_code)
        assert "<title>" in r.text and 'data-testid="topbar"' in r.text
        if want == 403:
            assert 'data-testid="error-page"' in r.text
    denied = audit_items(client, admin_headers, action="access.denied")
    assert len(denied) == len(set(GET_PAGES) - allowed)
    assert all(e["outcome"] == "denied" and e["details"]["status"] == 403 for e in denied)
    home = c.get("/", follow_redirects=False)
    assert home.headers["location"] == ("/cases" if role == "viewer" else "/analyze")


def test_nav_shows_admin_links_only_to_admins(browser):
    admin, viewer = browser("admin").get("/cases").text, browser("viewer").get("/cases").text
    assert 'data-testid="nav-audit"' in admin and 'data-testid="nav-users"' in admin
    assert 'data-testid="nav-audit"' not in viewer and 'data-testid="nav-analyze"' not in viewer
    assert "Sign out" in viewer and 'data-testid="current-role">viewer<' in viewer


def test_viewer_cannot_post_analyze(browser, client, admin_headers):
    viewer = browser("viewer")
    token = csrf_of(viewer.get("/cases").text)
    r = viewer.post(
        "/analyze",
        data={"csrf_token": token},
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        follow_redirects=False,
    )
    assert r.status_code == 403 and 'data-testid="error-page"' in r.text
    assert case_total(client, admin_headers) == 0


@pytest.mark.parametrize("how", ["missing", "empty", "wrong", "other-session"])
def test_post_without_valid_csrf_is_rejected_and_changes_nothing(
    browser, client, admin_headers, how
):
    clinician, admin = browser("clinician"), browser("admin")
    tokens = {
        "missing": (None, None),
        "empty": ("", ""),
        "wrong": ("0" * 64, "0" * 64),
        # each client sends the other session's (valid) token
        "other-session": (csrf_of(admin.get("/cases").text), csrf_of(clinician.get("/cases").text)),
    }
    for_clinician, for_admin = tokens[how]

    def form(token: str | None, **fields: str) -> dict[str, str]:
        return fields if token is None else {"csrf_token": token, **fields}

    r = clinician.post(
        "/analyze",
        data=form(for_clinician),
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        follow_redirects=False,
    )
    assert r.status_code == 403 and "could not be verified" in r.text
    assert case_total(client, admin_headers) == 0
    r = admin.post(
        "/admin/users",
        data=form(for_admin, username="sneaky", password=PASSWORD, role="admin"),
        follow_redirects=False,
    )
    assert r.status_code == 403
    users = client.get("/api/v1/users", headers=admin_headers).json()["items"]
    assert "sneaky" not in [u["username"] for u in users]
    r = clinician.post("/logout", data=form(for_clinician), follow_redirects=False)
    assert r.status_code == 403
    assert clinician.get("/cases", follow_redirects=False).status_code == 200  # still signed in
    denied = audit_items(client, admin_headers, action="access.denied")
    assert len(denied) == 3 and all(e["details"]["reason"] == "csrf" for e in denied)


def test_logout_ends_session(browser, client, admin_headers):
    c = browser("clinician")
    old = c.cookies.get("clearscan_session")
    token = csrf_of(c.get("/cases").text)
    r = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'clearscan_session=""' in set_cookies(r)["clearscan_session"]
    stale = TestClient(c.app, raise_server_exceptions=False)
    stale.cookies.set("clearscan_session", old)
    assert stale.get("/cases", follow_redirects=False).status_code == 303
    assert stale.get("/api/v1/cases").status_code == 401  # the API no longer accepts it either
    event = audit_items(client, admin_headers, action="auth.logout")[0]
    assert event["actor"] == c.headers["x-test-user"] and event["details"] == {"via": "web"}


def test_security_headers_and_no_inline_code(browser):
    c = browser("admin")
    analyze(c, [("x.png", png_bytes())])
    case_id = c.get("/api/v1/cases").json()["items"][0]["id"]
    for path in ["/login", *GET_PAGES, f"/cases/{case_id}"]:
        r = c.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert (
            "unsafe-inline" not in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        )
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
        # Nothing the CSP would block: no inline scripts, style blocks, style attributes, handlers.
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
        assert "<style" not in r.text and " style=" not in r.text, path
        assert not re.search(r"\son[a-z]+=", r.text), path


def test_static_assets_served(client):
    for name, kind in [
        ("clearscan.css", "text/css"),
        ("clearscan.js", "javascript"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert client.get("/static/../views.py").status_code == 404
    assert client.get("/static/views.py").status_code == 404


# --- analysis, case page, reviews ---------------------------------------------------------------


def test_upload_png_and_dicom_shows_results(browser):
    c = browser("clinician")
    r = analyze(
        c,
        [("a.png", png_bytes()), ("b.dcm", dicom_bytes())],
        patient_ref="MRN-<42>",
        note="cough & fever",
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/cases/")
    page = c.get(r.headers["location"])
    assert page.status_code == 200
    html = page.text
    assert html.count('data-testid="image-panel"') == 2
    assert html.count('data-testid="probabilities"') == 2 and "%</span>" in html
    assert html.count('data-testid="heatmap"') == 2 and "/heatmap.png" in html
    assert html.count('data-testid="review-form"') == 2
    assert "MRN-&lt;42&gt;" in html and "cough &amp; fever" in html  # escaped
    assert "Not for clinical use" in html  # the model's intended use
    assert 'data-box="0,0,512,512"' in html and 'data-image-width="512"' in html
    assert "DICOM" in html and "16-bit" in html
    # The overlay and preview sources work with the session cookie.
    heat = re.search(r'src="(/api/v1/predictions/[^"]+/heatmap\.png)"', html).group(1)
    preview = re.search(r'src="(/api/v1/images/[^"]+/preview\.png)"', html).group(1)
    assert c.get(heat).headers["content-type"] == "image/png"
    assert c.get(preview + "?preset=auto").status_code == 200
    for preset in ("default", "auto", "soft", "full"):
        assert f'data-preset="{preset}"' in html


def test_case_page_shows_ct_window_presets(browser):
    from clearscan.web.present.cases import presets_for

    assert presets_for("dicom", "CT", 1)[:3] == ["default", "lung", "mediastinum"]
    assert {"bone", "brain", "abdomen"} <= set(presets_for("dicom", "CT", 1))
    assert presets_for("dicom", "MR", 1) == ["default", "auto", "soft", "full"]
    assert presets_for("png", None, 3) == []


def test_case_page_audits_view(browser, client, admin_headers):
    c = browser("viewer")
    clinician = browser("clinician")
    r = analyze(clinician, [("a.png", png_bytes())])
    case_id = r.headers["location"].rsplit("/", 1)[1]
    page = c.get(f"/cases/{case_id}")
    assert page.status_code == 200
    assert 'data-testid="review-form"' not in page.text  # viewers see, but cannot review
    views = audit_items(client, admin_headers, action="case.view", actor=c.headers["x-test-user"])
    assert [e["object_id"] for e in views] == [case_id]


def test_missing_case_is_a_404_page(browser):
    r = browser("viewer").get("/cases/does-not-exist")
    assert r.status_code == 404 and 'data-testid="error-page"' in r.text


def test_analyze_rejection_rerenders_form_and_stores_nothing(browser, client, admin_headers):
    c = browser("clinician")
    r = analyze(c, [("x.png", b"hello, not an image")], patient_ref="MRN-7")
    assert r.status_code == 415
    assert 'data-testid="error-message"' in r.text and "file 1" in r.text
    assert 'value="MRN-7"' in r.text  # the form keeps what was typed
    r = analyze(c, [("ct.dcm", dicom_bytes(modality="CT"))])
    assert r.status_code == 422 and "CT" in r.text
    # A browser sends one empty, unnamed part when no file is chosen.
    token = csrf_of(c.get("/analyze").text)
    body = (
        f'--XX\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
        '--XX\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
        "Content-Type: application/octet-stream\r\n\r\n\r\n--XX--\r\n"
    )
    r = c.post(
        "/analyze",
        content=body.encode(),
        headers={"content-type": "multipart/form-data; boundary=XX"},
    )
    assert r.status_code == 422 and "Choose at least one image file" in r.text
    r = analyze(c, [], patient_ref="x")
    assert r.status_code == 422 and "Choose at least one image file" in r.text
    assert case_total(client, admin_headers) == 0


def test_analyze_without_explanation_has_no_heatmap(browser):
    c = browser("clinician")
    token = csrf_of(c.get("/analyze").text)
    r = c.post(
        "/analyze",
        data={"csrf_token": token},
        files=[("file", ("x.png", png_bytes(), "image/png"))],
        follow_redirects=False,
    )
    assert r.status_code == 303
    html = c.get(r.headers["location"]).text
    assert 'data-testid="heatmap"' not in html and "explanation was switched off" in html


def test_analyze_page_lists_models(browser):
    html = browser("clinician").get("/analyze").text
    assert 'value="pneumonia-cxr" selected' in html and "pneumonia-cxr 1.0.0" in html
    assert 'type="file" multiple' in html and 'name="explain" value="on" checked' in html
    assert 'data-testid="intended-use"' in html


def test_review_through_form_is_stored(browser, client, admin_headers):
    c = browser("clinician")
    location = analyze(c, [("a.png", png_bytes())]).headers["location"]
    case_id = location.rsplit("/", 1)[1]
    detail = c.get(f"/api/v1/cases/{case_id}").json()
    pred = detail["images"][0]["predictions"][0]
    other = next(lb for lb in pred["labels"] if lb != pred["top_label"])
    action = f"/cases/{case_id}/predictions/{pred['id']}/review"
    token = csrf_of(c.get(location).text)

    bad = c.post(action, data={"csrf_token": token, "verdict": "disagree"}, follow_redirects=False)
    assert bad.status_code == 422 and "choose the correct label" in bad.text
    bad = c.post(
        action,
        data={"csrf_token": token, "verdict": "disagree", "correct_label": "no-such-label"},
        follow_redirects=False,
    )
    assert bad.status_code == 422 and "not one of" in bad.text

    r = c.post(
        action,
        data={
            "csrf_token": token,
            "verdict": "disagree",
            "correct_label": other,
            "comment": "Clear lungs <b>really</b>",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"{location}#prediction-{pred['id']}"
    r = c.post(
        action,
        data={"csrf_token": token, "verdict": "agree", "correct_label": other},
        follow_redirects=False,
    )
    assert r.status_code == 303  # the label of a hidden select is ignored when agreeing

    reviews = c.get(f"/api/v1/cases/{case_id}").json()["images"][0]["predictions"][0]["reviews"]
    assert [(rv["agree"], rv["correct_label"]) for rv in reviews] == [
        (False, other),
        (True, pred["top_label"]),
    ]
    assert reviews[0]["comment"] == "Clear lungs <b>really</b>"
    html = c.get(location).text
    assert html.count('data-testid="review"') == 2 and "Disagrees" in html and "Agrees" in html
    assert "Clear lungs &lt;b&gt;really&lt;/b&gt;" in html
    assert (
        audit_items(client, admin_headers, action="review.create")[0]["actor"]
        == c.headers["x-test-user"]
    )


def test_viewer_cannot_review(browser):
    clinician, viewer = browser("clinician"), browser("viewer")
    case_id = analyze(clinician, [("a.png", png_bytes())]).headers["location"].rsplit("/", 1)[1]
    pred = clinician.get(f"/api/v1/cases/{case_id}").json()["images"][0]["predictions"][0]
    token = csrf_of(viewer.get("/cases").text)
    r = viewer.post(
        f"/cases/{case_id}/predictions/{pred['id']}/review",
        data={"csrf_token": token, "verdict": "agree"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert (
        clinician.get(f"/api/v1/cases/{case_id}").json()["images"][0]["predictions"][0]["reviews"]
        == []
    )


def test_review_of_prediction_from_another_case_404(browser):
    c = browser("clinician")
    a = analyze(c, [("a.png", png_bytes())]).headers["location"].rsplit("/", 1)[1]
    b = analyze(c, [("b.png", png_bytes())]).headers["location"].rsplit("/", 1)[1]
    pred_b = c.get(f"/api/v1/cases/{b}").json()["images"][0]["predictions"][0]["id"]
    token = csrf_of(c.get("/cases").text)
    r = c.post(
        f"/cases/{a}/predictions/{pred_b}/review",
        data={"csrf_token": token, "verdict": "agree"},
        follow_redirects=False,
    )
    assert r.status_code == 404


# --- cases list ---------------------------------------------------------------------------------


def test_cases_list_filters_and_pagination(browser):
    c = browser("clinician")
    small = png_bytes(chest_like(64, 5))
    for i in range(21):
        assert analyze(c, [("x.png", small)], patient_ref=f"P-{i:02d}").status_code == 303
    html = c.get("/cases").text
    assert html.count('data-testid="case-row"') == 20
    assert f"1{DASH}20 of 21 cases" in html and 'href="?page=2"' in html
    page2 = c.get("/cases?page=2").text
    assert page2.count('data-testid="case-row"') == 1 and f"21{DASH}21 of 21 cases" in page2
    assert "P-00" in page2  # oldest last

    top = c.get("/api/v1/cases?limit=1").json()["items"][0]["top_labels"][0]
    other = "normal" if top == "pneumonia" else "pneumonia"
    assert '<span class="chip' in html and f">{top}</span>" in html
    assert c.get(f"/cases?label={top}").text.count('data-testid="case-row"') == 20
    assert "No cases found" in c.get(f"/cases?label={other}").text
    me = c.headers["x-test-user"]
    assert "of 21 cases" in c.get(f"/cases?user={me}").text
    assert "No cases found" in c.get("/cases?user=nobody").text
    assert "of 21 cases" in c.get("/cases?since=2000-01-01&until=2999-12-31").text
    assert "No cases found" in c.get("/cases?since=2999-01-01").text
    bad = c.get("/cases?since=yesterday")
    assert bad.status_code == 422 and "not a valid date" in bad.text
    # Filters survive pagination.
    assert f'href="?label={top}&amp;page=2"' in c.get(f"/cases?label={top}").text


# --- models -------------------------------------------------------------------------------------


def test_model_pages(browser):
    c = browser("viewer")
    html = c.get("/models").text
    assert 'data-testid="model-row"' in html and "/models/pneumonia-cxr" in html
    page = c.get("/models/pneumonia-cxr")
    assert page.status_code == 200
    html = page.text
    auc = c.app.state.clearscan.registry.get("pneumonia-cxr").manifest.metrics["validation"]["auc"]
    for fact in (
        "1.0.0",
        "classification",
        "chest",
        "28 \u00d7 28 px",
        "Grad-CAM",
        "auc",
        f"{auc:.3f}",
        "Not for clinical use",
        "CC BY 4.0",
        "Limitations",
    ):
        assert fact in html, fact
    assert 'data-testid="model-card"' in html and "<h2>Intended use</h2>" in html
    assert c.get("/models/nope").status_code == 404


def test_markdown_escapes_html():
    out = markdown("# T\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1))")
    assert "<script>" not in out and "&lt;script&gt;" in out and 'href="javascript' not in out


# --- administration -----------------------------------------------------------------------------


def test_admin_creates_and_updates_users(browser):
    admin = browser("admin")
    token = csrf_of(admin.get("/admin/users").text)
    r = admin.post(
        "/admin/users",
        data={
            "csrf_token": token,
            "username": "dr.house",
            "password": PASSWORD,
            "role": "clinician",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = admin.get(r.headers["location"]).text
    assert "User dr.house created." in page and 'data-username="dr.house"' in page

    dup = admin.post(
        "/admin/users",
        data={"csrf_token": token, "username": "dr.house", "password": PASSWORD, "role": "viewer"},
    )
    assert dup.status_code == 409 and "already exists" in dup.text
    bad = admin.post(
        "/admin/users",
        data={"csrf_token": token, "username": "x", "password": "short", "role": "wizard"},
    )
    assert bad.status_code == 422
    assert "Username" in bad.text and "Password" in bad.text and "Role" in bad.text

    users = admin.get("/api/v1/users").json()["items"]  # the session cookie works for API GETs
    uid = next(u["id"] for u in users if u["username"] == "dr.house")
    r = admin.post(
        f"/admin/users/{uid}", data={"csrf_token": token, "role": "viewer"}, follow_redirects=False
    )
    assert r.status_code == 303 and "updated" in admin.get(r.headers["location"]).text
    house = TestClient(admin.app, raise_server_exceptions=False)
    assert web_login(house, "dr.house", PASSWORD).headers["location"] == "/cases"  # viewer now

    r = admin.post(
        f"/admin/users/{uid}",
        data={"csrf_token": token, "disabled": "true"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert house.get("/cases", follow_redirects=False).status_code == 303  # sessions revoked
    assert web_login(house, "dr.house", PASSWORD).status_code == 400
    r = admin.post(
        f"/admin/users/{uid}",
        data={"csrf_token": token, "disabled": "false"},
        follow_redirects=False,
    )
    assert web_login(house, "dr.house", PASSWORD).status_code == 303

    assert (
        admin.post("/admin/users/9999", data={"csrf_token": token, "role": "viewer"}).status_code
        == 404
    )


def test_last_admin_cannot_be_demoted(browser):
    admin = browser("admin")
    token = csrf_of(admin.get("/admin/users").text)
    uid = admin.get("/api/v1/users").json()["items"][0]["id"]  # the cookie works for API GETs
    r = admin.post(f"/admin/users/{uid}", data={"csrf_token": token, "role": "viewer"})
    assert r.status_code == 409 and "last active admin" in r.text
    r = admin.post(f"/admin/users/{uid}", data={"csrf_token": token, "disabled": "true"})
    assert r.status_code == 409
    assert admin.get("/admin/users").status_code == 200  # still an admin


def test_audit_page_filters_and_chain_status(browser, monkeypatch):
    admin = browser("admin")
    html = admin.get("/admin/audit").text
    assert 'data-testid="chain-status"' in html and "Chain intact:" in html
    assert 'data-action="auth.login"' in html
    filtered = admin.get("/admin/audit?action=user.create&actor=system").text
    assert filtered.count('data-testid="audit-row"') == 1 and "bootstrap" in filtered

    # A broken chain is reported in red with the first bad seq.
    broken = ChainReport(ok=False, checked=6, first_bad_seq=7, reason="hash mismatch")
    monkeypatch.setattr(audit_service, "verify_chain", lambda *, db: broken)
    html = admin.get("/admin/audit").text
    assert "chain-bad" in html and "Chain broken at event #7" in html and "hash mismatch" in html


def test_audit_pagination(browser):
    admin = browser("admin")
    c = browser("clinician")
    case = analyze(c, [("a.png", png_bytes(chest_like(64)))]).headers["location"]
    for _ in range(50):
        c.get(case)
    html = admin.get("/admin/audit").text
    assert html.count('data-testid="audit-row"') == 50 and 'href="?page=2"' in html


def test_unknown_page_is_an_html_404_for_browsers_json_for_api(client):
    r = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "Page not found" in r.text
    api = client.get("/api/v1/no-such-thing", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json()["detail"]
