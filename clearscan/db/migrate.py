"""Run Alembic migrations programmatically (`clearscan db upgrade`, server start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_heads(url: str) -> set[str]:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def script_heads() -> set[str]:
    """The revisions this code's migrations end at."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def check_current(url: str) -> None:
    """Raise ConfigError unless the database is at this code's schema revision (processes that
    do not migrate, such as workers, refuse to run against an older or newer schema)."""
    from clearscan.config import ConfigError

    try:
        have = current_heads(url)
    except Exception as exc:  # unreachable server, wrong credentials...
        raise ConfigError(
            f"cannot read the database schema version: {type(exc).__name__}: {exc}"
        ) from None
    want = script_heads()
    if have != want:
        raise ConfigError(
            f"the database schema is at {sorted(have) or 'nothing'}, this code needs "
            f"{sorted(want)}: run `clearscan db upgrade` first"
        )
