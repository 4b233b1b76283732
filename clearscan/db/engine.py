"""Engine creation. SQLite runs in WAL mode with synchronous=FULL: an acknowledged write survives a
crash or power loss. PostgreSQL uses the same code with a different URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.config import ConfigError


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    try:
        return _create(url, echo=echo)
    except (ImportError, NoSuchModuleError) as exc:
        parsed = make_url(url)
        postgres = parsed.get_backend_name() == "postgresql"
        hint = " (pip install 'clearscan[postgres]')" if postgres else ""
        raise ConfigError(
            f"database driver {parsed.drivername!r} is not installed{hint}: {exc}"
        ) from None
    except ArgumentError as exc:
        raise ConfigError(f"the database URL is not valid: {exc}") from None


def _create(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
