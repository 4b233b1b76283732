"""job delivery: idempotency key, attempt cap, queue, last delivery

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import clearscan.db.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3")
        )
        batch.add_column(
            sa.Column("queue", sa.String(length=32), nullable=False, server_default="default")
        )
        batch.add_column(
            sa.Column(
                "delivered_at", clearscan.db.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.drop_column("delivered_at")
        batch.drop_column("queue")
        batch.drop_column("max_attempts")
        batch.drop_column("idempotency_key")
