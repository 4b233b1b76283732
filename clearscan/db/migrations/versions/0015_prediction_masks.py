"""Segmentation predictions keep their label map

Adds `predictions.mask_sha256`: the blob of the label map PNG (pixel value = class index, at the
image's resolution) of a segmentation model's prediction; NULL for classifications.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("mask_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("mask_sha256")
