"""Users API and password handling."""

from __future__ import annotations

from argon2 import PasswordHasher

from clearscan.auth.security import hash_password, verify_password
from tests.conftest import login


def test_argon2id_hashes():
    h = hash_password("a long password")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "a long password") and not verify_password(h, "wrong")
    assert not verify_password(None, "anything")


def test_production_parameters_meet_owasp_minimum():
    from argon2 import Type, extract_parameters

    from clearscan.auth.security import PARAMETERS

    assert PARAMETERS.type is Type.ID
    assert PARAMETERS.time_cost >= 2 and PARAMETERS.memory_cost >= 19 * 1024
    # what a hash made with them records (the suite hashes with smaller ones, see conftest)
    made = PasswordHasher.from_parameters(PARAMETERS).hash("a long password")
    assert extract_parameters(made) == PARAMETERS


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


def _me(client, headers) -> int:
    return client.get("/api/v1/users", headers=headers).status_code


def test_a_password_change_revokes_earlier_tokens(client, admin_headers):
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "dr.grey", "password": "first-password-1", "role": "admin"},
    )
    uid = r.json()["id"]
    old = login(client, "dr.grey", "first-password-1")
    assert _me(client, old) == 200
    r = client.patch(
        f"/api/v1/users/{uid}", headers=admin_headers, json={"password": "second-password-2"}
    )
    assert r.status_code == 200
    assert _me(client, old) == 401  # a stolen token does not survive the reset
    r = client.post(
        "/api/v1/auth/token", data={"username": "dr.grey", "password": "first-password-1"}
    )
    assert r.status_code == 401
    new = login(client, "dr.grey", "second-password-2")
    assert _me(client, new) == 200
    assert _me(client, admin_headers) == 200  # other users' tokens are untouched


def test_disabling_revokes_tokens_and_enabling_does_not_revive_them(client, admin_headers):
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "dr.yang", "password": "yang-password-1", "role": "admin"},
    )
    uid = r.json()["id"]
    old = login(client, "dr.yang", "yang-password-1")
    patch = f"/api/v1/users/{uid}"
    assert client.patch(patch, headers=admin_headers, json={"disabled": True}).status_code == 200
    assert _me(client, old) == 401
    assert client.patch(patch, headers=admin_headers, json={"disabled": False}).status_code == 200
    assert _me(client, old) == 401  # issued before the disable: stays revoked
    assert _me(client, login(client, "dr.yang", "yang-password-1")) == 200


def test_a_password_set_from_the_cli_revokes_tokens(app, client, admin_headers, monkeypatch):
    from typer.testing import CliRunner

    from clearscan.cli.main import app as cli

    settings = app.state.clearscan.settings
    monkeypatch.setenv("CLEARSCAN_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    d = ["--data-dir", str(settings.data_dir)]
    runner = CliRunner()
    r = runner.invoke(cli, ["users", "set-password", "admin", "--password", "short", *d])
    assert r.exit_code == 2 and "at least 10 characters" in r.output
    r = runner.invoke(cli, ["users", "set-password", "admin", "--password", "new-admin-pw-9", *d])
    assert r.exit_code == 0, r.output
    assert "new-admin-pw-9" not in r.output
    assert (
        runner.invoke(cli, ["users", "set-password", "ghost", "--password", "x" * 12, *d]).exit_code
        == 1
    )
    assert _me(client, admin_headers) == 401
    assert _me(client, login(client, "admin", "new-admin-pw-9")) == 200
