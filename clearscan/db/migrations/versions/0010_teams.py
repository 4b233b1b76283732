"""Teams and team ownership of cases, datasets, evaluations and training runs

Creates `teams` and `team_members`, the team `general` with every existing user in it, and a
`team_id` on cases, datasets and jobs (batches, training runs and evaluations are jobs), set to
`general` on every existing row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 04:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import clearscan.db.base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TEAM = "general"
OWNED = ("cases", "datasets", "jobs")


def upgrade() -> None:
    teams = op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", clearscan.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
    )
    op.create_index(op.f("ix_teams_name"), "teams", ["name"], unique=True)
    op.create_table(
        "team_members",
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_team_members_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_team_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_team_members")),
    )
    op.create_index(op.f("ix_team_members_user_id"), "team_members", ["user_id"], unique=False)
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("team_id", sa.Integer(), nullable=True))
            batch.create_index(batch.f(f"ix_{table}_team_id"), ["team_id"], unique=False)
            batch.create_foreign_key(
                batch.f(f"fk_{table}_team_id_teams"), "teams", ["team_id"], ["id"]
            )

    bind = op.get_bind()
    op.bulk_insert(teams, [{"name": DEFAULT_TEAM, "created_at": datetime.now(UTC)}])
    general = bind.execute(
        sa.text("SELECT id FROM teams WHERE name = :name"), {"name": DEFAULT_TEAM}
    ).scalar_one()
    bind.execute(
        sa.text("INSERT INTO team_members (team_id, user_id) SELECT :team, id FROM users"),
        {"team": general},
    )
    for table in OWNED:
        bind.execute(sa.text(f"UPDATE {table} SET team_id = :team"), {"team": general})  # noqa: S608


def downgrade() -> None:
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(batch.f(f"fk_{table}_team_id_teams"), type_="foreignkey")
            batch.drop_index(batch.f(f"ix_{table}_team_id"))
            batch.drop_column("team_id")
    op.drop_index(op.f("ix_team_members_user_id"), table_name="team_members")
    op.drop_table("team_members")
    op.drop_index(op.f("ix_teams_name"), table_name="teams")
    op.drop_table("teams")
