"""The 0010 migration on SQLite and PostgreSQL: existing users join `general`, existing cases,
datasets and jobs belong to it; downgrade removes it all again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from clearscan.config import Settings
from clearscan.db.migrate import alembic_config, upgrade
from tests.conftest import pg_available, pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    with pg_database(settings) as pg:
        yield str(pg.database_url)


def _rows_before_teams(conn: sa.Connection) -> None:
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
    for uid in (1, 2):
        conn.execute(
            sa.text(
                "INSERT INTO users (id, username, password_hash, role, disabled, created_at, "
                "token_version) VALUES (:id, :name, 'x', 'viewer', false, :now, 0)"
            ),
            {"id": uid, "name": f"user{uid}", "now": now},
        )
    conn.execute(
        sa.text("INSERT INTO cases (id, created_at, created_by_id) VALUES ('c1', :now, 1)"),
        {"now": now},
    )
    conn.execute(
        sa.text(
            "INSERT INTO datasets (id, name, kind, source_format, content_hash, classes, counts, "
            "n_items, info, created_at) VALUES ('d1', 'd', 'images', 'folder', 'h', :j, :o, 0, "
            ":o, :now)"
        ),
        {"j": json.dumps([]), "o": json.dumps({}), "now": now},
    )
    conn.execute(
        sa.text(
            "INSERT INTO jobs (id, kind, status, params, progress, cancel_requested, attempts, "
            "created_at) VALUES ('j1', 'train', 'queued', :o, :o, false, 0, :now)"
        ),
        {"o": json.dumps({}), "now": now},
    )


def test_upgrade_puts_everyone_and_everything_in_general_and_downgrade_undoes_it(url):
    from alembic import command

    upgrade(url, "0009")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _rows_before_teams(conn)
        upgrade(url, "0010")
        with engine.connect() as conn:
            general = conn.execute(sa.text("SELECT id FROM teams WHERE name = 'general'")).one()[0]
            members = conn.execute(
                sa.text("SELECT user_id FROM team_members WHERE team_id = :t ORDER BY user_id"),
                {"t": general},
            ).scalars()
            assert list(members) == [1, 2]
            for table in ("cases", "datasets", "jobs"):
                owners = conn.execute(sa.text(f"SELECT team_id FROM {table}")).scalars().all()
                assert owners == [general], table
        command.downgrade(alembic_config(url), "0009")
        inspector = sa.inspect(engine)
        assert "teams" not in inspector.get_table_names()
        assert "team_members" not in inspector.get_table_names()
        for table in ("cases", "datasets", "jobs"):
            assert "team_id" not in {c["name"] for c in inspector.get_columns(table)}
        upgrade(url, "0010")  # and up again
    finally:
        engine.dispose()
