"""API tokens revocable per user (users.token_version) and remembered sign-in addresses

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("token_version", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "login_known_addresses",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_known_addresses")),
    )
    op.create_index(
        op.f("ix_login_known_addresses_until"), "login_known_addresses", ["until"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_login_known_addresses_until"), table_name="login_known_addresses")
    op.drop_table("login_known_addresses")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("token_version")
