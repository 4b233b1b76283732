"""batches: one row per image of a batch job

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import clearscan.db.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("source_image_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "finished_at", clearscan.db.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["jobs.id"],
            name=op.f("fk_batch_items_batch_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_batch_items_case_id_cases"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("batch_id", "idx", name=op.f("pk_batch_items")),
        sa.UniqueConstraint("case_id", name=op.f("uq_batch_items_case_id")),
    )


def downgrade() -> None:
    op.drop_table("batch_items")
