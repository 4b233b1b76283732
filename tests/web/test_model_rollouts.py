"""Versions, activation, roll-back, canary and shadow on the model page (/models/{name})."""

from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient

from tests.conftest import png_bytes
from tests.registry.test_rollout_api import _always_normal_package
from tests.registry.test_versions_api import _import, package_zip
from tests.web.test_pages import csrf_of

MODEL = "pneumonia-cxr"
PAGE = f"/models/{MODEL}"
ROW = re.compile(r'data-testid="version-row" data-version="([^"]+)" data-status="([^"]+)"')


def rows(html: str) -> dict[str, str]:
    return dict(ROW.findall(html))


def active_version(client: TestClient, headers: dict[str, str]) -> str:
    r = client.get(f"/api/v1/models/{MODEL}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["version"]


def plan(client: TestClient, headers: dict[str, str]) -> dict:
    return client.get(f"/api/v1/models/{MODEL}/rollout", headers=headers).json()


def test_admin_activates_and_rolls_back_through_the_page(sign_in, client, admin_headers):
    assert _import(client, admin_headers, package_zip("1.1.0")).status_code == 201
    admin = sign_in("admin")
    page = admin.get(PAGE)
    assert page.status_code == 200
    assert rows(page.text) == {"1.1.0": "inactive", "1.0.0": "active"}
    assert 'data-testid="versions-table"' in page.text and "store" in page.text
    assert page.text.count('data-testid="activate"') == 1  # only the inactive version
    assert 'data-testid="rollback"' in page.text and 'data-testid="rollout-form"' in page.text
    sha = client.get(f"/api/v1/models/{MODEL}/versions", headers=admin_headers).json()["items"]
    assert all(v["weights_sha256"][:12] in page.text for v in sha)
    token = csrf_of(page.text)

    r = admin.post(
        f"{PAGE}/versions/1.1.0/activate", data={"csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"{PAGE}?done=activated"
    assert active_version(client, admin_headers) == "1.1.0"
    page = admin.get(r.headers["location"])
    assert "Version 1.1.0 is now the active version." in page.text
    assert rows(page.text) == {"1.1.0": "active", "1.0.0": "inactive"}

    bad = admin.post(f"{PAGE}/versions/9.9.9/activate", data={"csrf_token": token})
    assert (
        bad.status_code == 404 and "9.9.9" in bad.text and 'data-testid="error-message"' in bad.text
    )

    r = admin.post(f"{PAGE}/rollback", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert active_version(client, admin_headers) == "1.0.0"
    assert "Rolled back" in admin.get(r.headers["location"]).text

    again = admin.post(f"{PAGE}/rollback", data={"csrf_token": token})
    assert again.status_code == 409 and "no earlier version" in again.text
    assert active_version(client, admin_headers) == "1.0.0"
    actions = {
        e["action"]
        for e in client.get("/api/v1/audit?limit=200", headers=admin_headers).json()["items"]
    }
    assert {"model.activate", "model.rollback"} <= actions


def test_admin_sets_canary_and_shadow_and_sees_the_report(
    sign_in, client, admin_headers, clinician_headers
):
    assert _import(client, admin_headers, package_zip("1.1.0")).status_code == 201
    assert _import(client, admin_headers, _always_normal_package("1.2.0")).status_code == 201
    admin = sign_in("admin")
    page = admin.get(PAGE)
    assert 'data-testid="shadow-report"' not in page.text  # no shadow, no results yet
    token = csrf_of(page.text)
    url = f"{PAGE}/rollout"

    bad = admin.post(
        url, data={"csrf_token": token, "canary_version": "1.1.0", "canary_percent": "150"}
    )
    assert bad.status_code == 422 and "0 to 100" in bad.text
    assert plan(client, admin_headers)["canary"] is None
    clash = admin.post(url, data={"csrf_token": token, "shadow_version": "1.0.0"})
    assert clash.status_code == 409 and "already the active version" in clash.text
    assert plan(client, admin_headers)["shadow"] is None

    r = admin.post(
        url,
        data={
            "csrf_token": token,
            "canary_version": "1.1.0",
            "canary_percent": "25",
            "shadow_version": "1.2.0",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    got = plan(client, admin_headers)
    assert got["canary"] == {"version": "1.1.0", "percent": 25}
    assert got["shadow"] == {"version": "1.2.0"}
    page = admin.get(r.headers["location"]).text
    assert "Roll-out settings saved." in page
    canary = re.search(r'data-testid="rollout-canary">(.*?)</dd>', page)
    assert canary and "1.1.0" in canary.group(1) and "25%" in canary.group(1)
    shadow = re.search(r'data-testid="rollout-shadow">(.*?)</dd>', page)
    assert shadow and "1.2.0" in shadow.group(1)
    assert 'data-testid="shadow-report"' in page and "No cases compared yet." in page

    # Shadow results show up in the report (the shadow runs after each reply).
    for _ in range(2):
        r = client.post(
            "/api/v1/predict",
            headers=clinician_headers,
            files=[("file", ("x.png", png_bytes(), "image/png"))],
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while True:
        page = admin.get(PAGE).text
        n = re.search(r'data-testid="shadow-n">(\d+)<', page)
        if (n and int(n.group(1)) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert n and n.group(1) == "2"
    assert 'data-testid="shadow-confusion"' in page and "Latency p50" in page

    # Submitting empty fields clears both; the report stays for the results that exist.
    r = admin.post(url, data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    got = plan(client, admin_headers)
    assert got["canary"] is None and got["shadow"] is None
    assert 'data-testid="shadow-report"' in admin.get(PAGE).text


def test_clinician_sees_versions_but_no_forms_and_cannot_post(sign_in, client, admin_headers):
    assert _import(client, admin_headers, package_zip("1.1.0")).status_code == 201
    r = client.put(
        f"/api/v1/models/{MODEL}/rollout",
        headers=admin_headers,
        json={"shadow": {"version": "1.1.0"}},
    )
    assert r.status_code == 200, r.text
    for role in ("clinician", "viewer"):
        user = sign_in(role)
        page = user.get(PAGE)
        assert page.status_code == 200
        assert rows(page.text) == {"1.1.0": "inactive", "1.0.0": "active"}
        for hidden in ("activate", "rollback", "rollout-form", "rollout-card", "shadow-report"):
            assert f'data-testid="{hidden}"' not in page.text, (role, hidden)
        token = csrf_of(page.text)  # the sign-out form's token
        for path, data in (
            (f"{PAGE}/versions/1.1.0/activate", {}),
            (f"{PAGE}/rollback", {}),
            (f"{PAGE}/rollout", {"canary_version": "1.1.0", "canary_percent": "50"}),
        ):
            denied = user.post(path, data={"csrf_token": token, **data})
            assert denied.status_code == 403 and "Access denied" in denied.text, (role, path)
    assert active_version(client, admin_headers) == "1.0.0"
    assert plan(client, admin_headers)["canary"] is None


def test_post_without_csrf_is_rejected_and_changes_nothing(sign_in, client, admin_headers):
    assert _import(client, admin_headers, package_zip("1.1.0")).status_code == 201
    admin = sign_in("admin")
    for path, data in (
        (f"{PAGE}/versions/1.1.0/activate", {}),
        (f"{PAGE}/rollback", {}),
        (f"{PAGE}/rollout", {"canary_version": "1.1.0", "canary_percent": "50"}),
        (f"{PAGE}/versions/1.1.0/activate", {"csrf_token": "forged"}),
    ):
        r = admin.post(path, data=data)
        assert r.status_code == 403 and "security token" in r.text, path
    assert active_version(client, admin_headers) == "1.0.0"
    assert plan(client, admin_headers)["canary"] is None
