"""Reviews of single findings (a stenosis of a segmentation's QCA)

`finding_reviews`: a reviewer accepts or rejects one finding of a prediction (its position in
the prediction's list of stenoses, most severe first), with an optional comment.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 08:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import clearscan.db.base

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "finding_reviews",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("finding", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("accept", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", clearscan.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_finding_reviews_prediction_id", "finding_reviews", ["prediction_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_finding_reviews_prediction_id", table_name="finding_reviews")
    op.drop_table("finding_reviews")
