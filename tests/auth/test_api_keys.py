"""API keys of service accounts through the API: shown once, stored hashed, scoped, revocable,
throttled last-used time, refused by the web pages, never logged."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.engine import make_url

from clearscan.auth.models import ApiKey
from tests.conftest import png_bytes

KEY_RE = re.compile(r"^csk_([0-9a-f]{12})_([0-9A-Za-z]{43})$")


def make_key(
    client: TestClient,
    admin_headers: dict[str, str],
    scopes: list[str],
    *,
    role: str = "clinician",
    account: str | None = None,
    **extra: object,
) -> dict[str, object]:
    """A service account (made unless `account` names one) and a key for it: the create reply."""
    if account is None:
        account = f"router-{len(scopes)}-{'-'.join(scopes)}-{role}"
        r = client.post(
            "/api/v1/service-accounts",
            headers=admin_headers,
            json={"name": account, "role": role},
        )
        assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/api-keys",
        headers=admin_headers,
        json={"account": account, "name": "pacs-1", "scopes": scopes, **extra},
    )
    assert r.status_code == 201, r.text
    return r.json()


def bearer(created: dict[str, object]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['key']}"}


def x_api_key(created: dict[str, object]) -> dict[str, str]:
    return {"X-API-Key": str(created["key"])}


def test_key_is_shown_once_and_lists_never_show_it(client, admin_headers):
    created = make_key(client, admin_headers, ["read", "predict"])
    m = KEY_RE.match(str(created["key"]))
    assert m, created["key"]
    assert created["prefix"] == m.group(1)
    assert created["scopes"] == ["predict", "read"]
    assert created["account"] == "router-2-read-predict-clinician"
    assert created["created_by"] == "admin"
    assert created["last_used_at"] is None and created["revoked_at"] is None

    listing = client.get("/api/v1/api-keys", headers=admin_headers)
    assert listing.status_code == 200
    secret = m.group(2)
    assert secret not in listing.text
    (item,) = listing.json()["items"]
    assert "key" not in item
    assert item["prefix"] == created["prefix"] and item["id"] == created["id"]
    only = client.get(
        "/api/v1/api-keys", params={"account": "nobody"}, headers=admin_headers
    ).json()
    assert only == {"items": [], "total": 0}


def test_only_a_hash_is_stored(client, admin_headers, settings):
    created = make_key(client, admin_headers, ["read"])
    key = str(created["key"])
    secret = key.rsplit("_", 1)[1]
    assert client.get("/api/v1/cases", headers=bearer(created)).status_code == 200
    client.app.state.clearscan.engine.dispose()  # checkpoint nothing away: read every file
    db_file = Path(make_url(settings.sqlalchemy_url).database or "")
    files = [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
    assert files
    for f in files:
        raw = f.read_bytes()
        assert secret.encode() not in raw, f.name
        assert key.encode() not in raw, f.name
    # the audit trail names the key by its prefix only
    events = client.get(
        "/api/v1/audit", params={"action": "api_key.create"}, headers=admin_headers
    ).json()["items"]
    assert events and events[0]["details"]["prefix"] == created["prefix"]
    assert secret not in str(events)


def test_both_headers_work_and_scopes_are_enforced(client, admin_headers):
    read = make_key(client, admin_headers, ["read"])
    predict = make_key(client, admin_headers, ["predict"])
    for h in (bearer(read), x_api_key(read)):
        assert client.get("/api/v1/cases", headers=h).status_code == 200
        assert client.get("/api/v1/models", headers=h).status_code == 200
    # analyses need `predict`
    files = {"file": ("x.png", png_bytes(), "image/png")}
    r = client.post("/api/v1/predict", headers=bearer(read), files=files, data={"explain": "false"})
    assert r.status_code == 403 and "'predict' scope" in r.json()["detail"], r.text
    r = client.post(
        "/api/v1/predict", headers=x_api_key(predict), files=files, data={"explain": "false"}
    )
    assert r.status_code == 200, r.text
    case_id = r.json()["case_id"]
    # reading needs `read`
    r = client.get(f"/api/v1/cases/{case_id}", headers=bearer(predict))
    assert r.status_code == 403 and "'read' scope" in r.json()["detail"]
    assert client.get(f"/api/v1/cases/{case_id}", headers=bearer(read)).status_code == 200
    # admin routes and a person's acts: no key may
    for h in (bearer(read), bearer(predict)):
        r = client.get("/api/v1/users", headers=h)
        assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
        r = client.post("/api/v1/api-keys", headers=h, json={})
        assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
        r = client.post("/api/v1/training-runs", headers=h, json={"dataset": "x"})
        assert r.status_code == 403
        r = client.post("/api/v1/predictions/missing/review", headers=h, json={"agree": True})
        assert r.status_code == 403 and "'write' scope" in r.json()["detail"]
    denials = client.get(
        "/api/v1/audit", params={"action": "access.denied"}, headers=admin_headers
    ).json()["items"]
    assert any(e["actor"] == "router-1-read-clinician" for e in denials)


def test_a_viewer_account_cannot_predict_even_with_the_scope(client, admin_headers):
    created = make_key(client, admin_headers, ["predict", "read"], role="viewer")
    files = {"file": ("x.png", png_bytes(), "image/png")}
    r = client.post("/api/v1/predict", headers=bearer(created), files=files)
    assert r.status_code == 403 and "role 'viewer'" in r.json()["detail"]


def test_revoke_works_at_once(client, admin_headers):
    created = make_key(client, admin_headers, ["read"])
    h = bearer(created)
    assert client.get("/api/v1/cases", headers=h).status_code == 200
    r = client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin_headers)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = client.get("/api/v1/cases", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # revoking again changes nothing; an unknown id is 404
    again = client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin_headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json().get(
        "revoked_at", again.json()["revoked_at"]
    )
    assert client.delete("/api/v1/api-keys/999999", headers=admin_headers).status_code == 404
    events = client.get(
        "/api/v1/audit", params={"action": "api_key.revoke"}, headers=admin_headers
    ).json()["items"]
    assert len(events) == 1 and events[0]["object_id"] == str(created["id"])
    active = client.get(
        "/api/v1/api-keys", params={"include_revoked": "false"}, headers=admin_headers
    ).json()
    assert active["total"] == 0


def test_unknown_malformed_expired_and_doubled_keys_are_401(client, admin_headers):
    created = make_key(client, admin_headers, ["read"])
    key = str(created["key"])
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for h in (
        {"Authorization": f"Bearer {wrong}"},
        {"X-API-Key": wrong},
        {"X-API-Key": "csk_nonsense"},
        {"X-API-Key": ""},
        {"X-API-Key": key, "Authorization": f"Bearer {key}"},
    ):
        r = client.get("/api/v1/cases", headers=h)
        assert r.status_code == 401, (h, r.text)
        assert key not in r.text
    sessions = client.app.state.clearscan.sessions
    with sessions() as db:
        db.execute(
            update(ApiKey)
            .where(ApiKey.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.commit()
    r = client.get("/api/v1/cases", headers=bearer(created))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # audited like every anonymous denial: the first ones as events, all of them in the metrics
    denials = client.get(
        "/api/v1/audit", params={"action": "access.denied"}, headers=admin_headers
    ).json()["items"]
    assert any(e["details"]["status"] == 401 for e in denials)
    metrics = client.get("/metrics").text
    line = 'clearscan_anonymous_denials_total{route="/api/v1/cases"}'
    assert any(row.startswith(line) and float(row.split()[-1]) >= 6 for row in metrics.splitlines())


def test_expiry_must_be_in_the_future_with_an_offset(client, admin_headers):
    make_key(client, admin_headers, ["read"])
    body = {"account": "router-1-read-clinician", "name": "k", "scopes": ["read"]}
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = client.post("/api/v1/api-keys", headers=admin_headers, json={**body, "expires_at": past})
    assert r.status_code == 422 and "future" in r.json()["detail"]
    naive = "2099-01-01T00:00:00"
    r = client.post("/api/v1/api-keys", headers=admin_headers, json={**body, "expires_at": naive})
    assert r.status_code == 422
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    r = client.post("/api/v1/api-keys", headers=admin_headers, json={**body, "expires_at": later})
    assert r.status_code == 201 and r.json()["expires_at"] is not None
    assert client.get("/api/v1/cases", headers=bearer(r.json())).status_code == 200


def test_bad_create_requests_name_the_problem(client, admin_headers):
    make_key(client, admin_headers, ["read"])
    acct = "router-1-read-clinician"
    cases = [
        ({"account": acct, "name": "k", "scopes": []}, 422),
        ({"account": acct, "name": "k", "scopes": ["admin"]}, 422),
        ({"account": acct, "name": "k", "scopes": ["read"], "extra": 1}, 422),
        ({"account": "ghost", "name": "k", "scopes": ["read"]}, 404),
        ({"account": "admin", "name": "k", "scopes": ["read"]}, 409),  # a person's account
    ]
    for body, status in cases:
        r = client.post("/api/v1/api-keys", headers=admin_headers, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]
    r = client.post(
        "/api/v1/service-accounts", headers=admin_headers, json={"name": "x1", "role": "admin"}
    )
    assert r.status_code == 422
    r = client.post(
        "/api/v1/service-accounts", headers=admin_headers, json={"name": acct, "role": "viewer"}
    )
    assert r.status_code == 409
    listing = client.get("/api/v1/service-accounts", headers=admin_headers).json()
    assert [a["name"] for a in listing["items"]] == [acct] and listing["total"] == 1


def test_last_used_is_recorded_and_throttled(client, admin_headers):
    created = make_key(client, admin_headers, ["read"])

    def last_used() -> str | None:
        items = client.get("/api/v1/api-keys", headers=admin_headers).json()["items"]
        return items[0]["last_used_at"]

    assert last_used() is None
    assert client.get("/api/v1/cases", headers=bearer(created)).status_code == 200
    first = last_used()
    assert first is not None
    for _ in range(3):
        assert client.get("/api/v1/models", headers=bearer(created)).status_code == 200
    assert last_used() == first  # within the minute: not written again
    sessions = client.app.state.clearscan.sessions
    with sessions() as db:
        db.execute(
            update(ApiKey)
            .where(ApiKey.id == created["id"])
            .values(last_used_at=datetime.now(UTC) - timedelta(minutes=2))
        )
        db.commit()
    assert client.get("/api/v1/cases", headers=bearer(created)).status_code == 200
    assert last_used() > first  # type: ignore[operator]


def test_a_disabled_service_account_stops_its_keys(client, admin_headers):
    created = make_key(client, admin_headers, ["read"])
    account = client.get("/api/v1/service-accounts", headers=admin_headers).json()["items"][0]
    assert client.get("/api/v1/cases", headers=bearer(created)).status_code == 200
    r = client.patch(
        f"/api/v1/users/{account['id']}", headers=admin_headers, json={"disabled": True}
    )
    assert r.status_code == 200
    r = client.get("/api/v1/cases", headers=bearer(created))
    assert r.status_code == 401 and "disabled" in r.json()["detail"]


def test_a_service_account_never_signs_in_with_a_password(client, admin_headers):
    make_key(client, admin_headers, ["read"])
    account = client.get("/api/v1/service-accounts", headers=admin_headers).json()["items"][0]
    form = {"username": account["name"], "password": "!service-account"}
    assert client.post("/api/v1/auth/token", data=form).status_code == 401
    # even with a password an admin set on it
    r = client.patch(
        f"/api/v1/users/{account['id']}",
        headers=admin_headers,
        json={"password": "a-long-password-1"},
    )
    assert r.status_code == 200
    form["password"] = "a-long-password-1"
    assert client.post("/api/v1/auth/token", data=form).status_code == 401


def test_a_service_account_is_never_made_an_admin(client, admin_headers):
    make_key(client, admin_headers, ["read"])
    account = client.get("/api/v1/service-accounts", headers=admin_headers).json()["items"][0]
    url = f"/api/v1/users/{account['id']}"
    r = client.patch(url, headers=admin_headers, json={"role": "admin"})
    assert r.status_code == 409 and "service account" in r.json()["detail"]
    assert client.patch(url, headers=admin_headers, json={"role": "viewer"}).status_code == 200


@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
def test_web_pages_never_accept_a_key(client, admin_headers, header):
    created = make_key(client, admin_headers, ["read", "predict"])
    h = bearer(created) if header == "bearer" else x_api_key(created)
    for path in ("/", "/cases", "/analyze"):
        r = client.get(path, headers=h, follow_redirects=False)
        assert r.status_code in (302, 303, 307), (path, r.status_code)
        assert r.headers["location"].startswith("/login")
        assert "set-cookie" not in r.headers or "session" not in r.headers["set-cookie"]
    r = client.post(
        "/analyze",
        headers=h,
        files={"file": ("x.png", png_bytes(), "image/png")},
        follow_redirects=False,
    )
    assert r.status_code in (302, 303, 307, 401, 403), r.status_code


def test_keys_never_reach_the_logs(client, admin_headers, caplog):
    caplog.set_level(logging.DEBUG)
    created = make_key(client, admin_headers, ["read"])
    key = str(created["key"])
    secret = key.rsplit("_", 1)[1]
    client.get("/api/v1/cases", headers=bearer(created))
    client.post("/api/v1/predict", headers=bearer(created))  # 403
    client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin_headers)
    client.get("/api/v1/cases", headers=bearer(created))  # 401, revoked
    client.get("/api/v1/cases", headers={"X-API-Key": key[:-2] + "zz"})  # 401, unknown
    client.get("/cases", headers=bearer(created))  # a web page
    assert caplog.records  # the access log ran
    assert secret not in caplog.text
    assert secret[:20] not in caplog.text


def test_openapi_declares_both_security_schemes(client):
    spec = client.get("/api/v1/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    kinds = {(s["type"], s.get("scheme"), s.get("name")) for s in schemes.values()}
    assert ("http", "bearer", None) in kinds and ("apiKey", None, "X-API-Key") in kinds
    security = spec["paths"]["/api/v1/cases"]["get"]["security"]
    assert len(security) == 2  # either one
    assert "403" in spec["paths"]["/api/v1/cases"]["get"]["responses"]
    assert "security" not in spec["paths"]["/api/v1/auth/token"]["post"]


def test_a_listed_origin_may_send_a_key(settings, model_cache):
    """CORS (off by default) lets a listed origin send `X-API-Key` and revoke with DELETE."""
    from fastapi.testclient import TestClient

    from clearscan.app import create_app

    origin = "https://router.example.org"
    listed = settings.model_copy(update={"cors_origins": [origin]})
    app = create_app(listed, model_cache=model_cache)
    with TestClient(app) as c:
        r = c.options(
            "/api/v1/api-keys/1",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == origin
    assert "DELETE" in r.headers["access-control-allow-methods"]
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
