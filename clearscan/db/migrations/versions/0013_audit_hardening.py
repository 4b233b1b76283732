"""Audit trail: keyed chain, anchors, TRUNCATE blocked, anonymous denial counters

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 04:00:00

- ``audit_events.key_id``: which audit key signed an event (NULL: a plain sha256 event from
  before the chain was keyed; start-up seals those with a keyed checkpoint).
- TRUNCATE of ``audit_events`` and ``audit_head`` is refused on PostgreSQL (row triggers do not
  fire for TRUNCATE). SQLite has no TRUNCATE; its ``DELETE FROM`` without WHERE fires the row
  triggers.
- DELETE of an audit row is refused unless an ``audit.archive`` checkpoint event already in the
  table covers the row's sequence number (``details.last_seq``): the archiving path writes the
  checkpoint first, in the same transaction, then deletes exactly the archived range. UPDATE
  stays refused outright. (Anonymous denials are counted in memory and written as summary
  events; they need no table.)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_ARCHIVED = (
    "(SELECT max(CAST(json_extract(a.details, '$.last_seq') AS INTEGER)) "
    "FROM audit_events a WHERE a.action = 'audit.archive')"
)


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("key_id", sa.String(length=16), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"WHEN OLD.seq > coalesce({_SQLITE_ARCHIVED}, 0) "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only (only archived events, "
            "covered by an audit.archive checkpoint, may be removed)'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
            "BEGIN SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END"
        )
    elif bind.dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF TG_OP = 'DELETE' AND OLD.seq <= coalesce((SELECT max((a.details->>'last_seq')"
            "::bigint) FROM audit_events a WHERE a.action = 'audit.archive'), 0) THEN "
            "RETURN OLD; END IF; "
            "RAISE EXCEPTION 'audit_events is append-only (only archived events, covered by an "
            "audit.archive checkpoint, may be removed)'; END $$"
        )
        op.execute(
            "CREATE FUNCTION audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION '% cannot be truncated: the audit trail is append-only', "
            "TG_TABLE_NAME; END $$"
        )
        for table in ("audit_events", "audit_head"):
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate()"
            )
        op.execute(
            "CREATE FUNCTION audit_head_keep() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_head cannot be deleted'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION audit_head_keep()"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_delete")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
        )
    elif bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_delete ON audit_head")
        op.execute("DROP FUNCTION IF EXISTS audit_head_keep()")
        for table in ("audit_events", "audit_head"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS audit_no_truncate()")
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$"
        )
    # the older code checks plain sha256 hashes only: keyed events no longer verify under it
    op.drop_column("audit_events", "key_id")
