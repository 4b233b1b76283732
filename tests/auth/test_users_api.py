"""Users API and password handling."""

from __future__ import annotations

from clearscan.auth.security import hash_password, verify_password
from tests.conftest import login


def test_argon2id_hashes():
    h = hash_password("a long password")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "a long password") and not verify_password(h, "wrong")
    assert not verify_password(None, "anything")


def test_token_wrong_password_401(client):
    r = client.post("/api/v1/auth/token", data={"username": "admin", "password": "nope-nope-nope"})
    assert r.status_code == 401 and r.json()["detail"] == "incorrect username or password"
    r = client.post("/api/v1/auth/token", data={"username": "ghost", "password": "nope-nope-nope"})
    assert r.status_code == 401


def test_create_list_patch_users(client, admin_headers):
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "dr.house", "password": "vicodin-vicodin", "role": "clinician"},
    )
    assert r.status_code == 201
    uid = r.json()["id"]
    assert "password" not in r.text and "hash" not in r.text
    dup = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "dr.house", "password": "vicodin-vicodin", "role": "viewer"},
    )
    assert dup.status_code == 409
    listed = client.get("/api/v1/users", headers=admin_headers).json()
    assert listed["total"] == 2 and {u["username"] for u in listed["items"]} == {
        "admin",
        "dr.house",
    }
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"role": "viewer"})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert (
        client.patch(
            "/api/v1/users/424242", headers=admin_headers, json={"role": "viewer"}
        ).status_code
        == 404
    )
    h = login(client, "dr.house", "vicodin-vicodin")
    assert client.post("/api/v1/predict", headers=h).status_code == 403


def test_user_validation_errors_name_the_field(client, admin_headers):
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "x", "password": "short", "role": "wizard"},
    )
    assert r.status_code == 422
    d = r.json()["detail"]
    assert "username" in d and "password" in d and "role" in d


def test_last_admin_cannot_be_demoted(client, admin_headers):
    r = client.patch("/api/v1/users/1", headers=admin_headers, json={"role": "viewer"})
    assert r.status_code == 409 and "last active admin" in r.json()["detail"]
