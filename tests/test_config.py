"""Settings: secrets are generated for embedded use and refused when default in production."""

from __future__ import annotations

import re
import stat

import pytest

from clearscan.config import ConfigError, Settings


def test_embedded_secret_is_generated_once_and_private(tmp_path):
    s1 = Settings(data_dir=tmp_path)
    key = s1.resolved_secret_key
    assert len(key) >= 32
    assert Settings(data_dir=tmp_path).resolved_secret_key == key
    mode = (tmp_path / "secret_key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize("secret", [None, "changethis", "short"])
def test_production_refuses_missing_or_default_secret(tmp_path, secret):
    s = Settings(data_dir=tmp_path, environment="production", secret_key=secret)
    with pytest.raises(ConfigError, match="CLEARSCAN_SECRET_KEY"):
        s.check_production()


def test_production_accepts_real_secret(tmp_path):
    Settings(
        data_dir=tmp_path,
        environment="production",
        secret_key="x" * 40,
        pseudonym_key="p" * 40,
        audit_key="a" * 40,
    ).check_production()


def test_env_prefix_and_database_url(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARSCAN_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings(data_dir=tmp_path)
    assert s.max_upload_bytes == 7 * 1024 * 1024
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_default_sqlite_in_data_dir(tmp_path):
    assert Settings(data_dir=tmp_path).sqlalchemy_url == f"sqlite:///{tmp_path / 'clearscan.db'}"


def test_server_refuses_to_start_in_production_without_secret(tmp_path):
    from clearscan.app import create_app

    with pytest.raises(ConfigError):
        create_app(Settings(data_dir=tmp_path, environment="production"))


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db:5432/cs", "postgresql+psycopg://u:p@db:5432/cs"),
        ("postgresql://u@db/cs?sslmode=require", "postgresql+psycopg://u@db/cs?sslmode=require"),
        ("postgresql+psycopg://u@db/cs", "postgresql+psycopg://u@db/cs"),
        ("sqlite:////srv/cs.db", "sqlite:////srv/cs.db"),
    ],
)
def test_plain_postgres_urls_mean_psycopg3(tmp_path, given, used):
    assert Settings(data_dir=tmp_path, database_url=given).sqlalchemy_url == used


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg2://u@db/cs", "'postgresql+psycopg2' is not installed (pip install"),
        ("not a url", "the database URL is not valid"),
    ],
)
def test_unusable_database_url_is_a_config_error(tmp_path, url, message):
    from clearscan.app import create_app

    settings = Settings(data_dir=tmp_path, database_url=url, admin_password="x" * 16)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_app(settings)


def test_plain_postgresql_url_serves_on_the_real_server(settings):
    """What a Kubernetes secret usually holds: postgresql://... (psycopg 3 is used)."""
    from fastapi.testclient import TestClient

    from clearscan.app import create_app
    from tests.conftest import ADMIN_PASSWORD, login, pg_available, pg_database

    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        plain = pg.model_copy(
            update={
                "database_url": pg.database_url.replace("postgresql+psycopg://", "postgresql://")
            }
        )
        assert plain.database_url.startswith("postgresql://postgres@")
        app = create_app(plain)
        try:
            with TestClient(app) as c:
                r = c.get("/api/v1/audit/verify", headers=login(c, "admin", ADMIN_PASSWORD))
                assert r.status_code == 200 and r.json()["ok"] is True
        finally:
            app.state.clearscan.engine.dispose()


@pytest.mark.parametrize(
    ("password", "rule"),
    [("short-pw", "at least 10 characters"), ("x" * 257, "at most 256 characters")],
)
def test_production_refuses_an_admin_password_against_the_policy(tmp_path, password, rule):
    s = Settings(
        data_dir=tmp_path,
        environment="production",
        secret_key="x" * 40,
        pseudonym_key="p" * 40,
        audit_key="a" * 40,
        admin_password=password,
    )
    with pytest.raises(
        ConfigError, match=f"CLEARSCAN_ADMIN_PASSWORD breaks the password policy: .*{rule}"
    ):
        s.check_production()
    Settings(  # outside production it is not checked, and a good one passes
        data_dir=tmp_path, admin_password=password, secret_key="x" * 40
    ).check_production()
    Settings(
        data_dir=tmp_path,
        environment="production",
        secret_key="x" * 40,
        pseudonym_key="p" * 40,
        audit_key="a" * 40,
        admin_password="a-long-enough-one",
    ).check_production()
