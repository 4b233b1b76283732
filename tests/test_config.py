"""Settings: secrets are generated for embedded use and refused when default in production."""

from __future__ import annotations

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
    Settings(data_dir=tmp_path, environment="production", secret_key="x" * 40).check_production()


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
