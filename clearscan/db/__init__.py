"""Engine, sessions and the declarative base. Alembic is the only way the schema changes."""

from clearscan.db.base import Base
from clearscan.db.engine import create_db_engine, make_session_factory

__all__ = ["Base", "create_db_engine", "make_session_factory"]
