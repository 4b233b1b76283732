"""SQLite runs in WAL mode with synchronous=FULL and foreign keys on."""

from __future__ import annotations

from sqlalchemy import text

from clearscan.db import create_db_engine


def test_sqlite_pragmas(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
