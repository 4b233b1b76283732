"""Segmentation datasets: each item's mask

Adds `dataset_items.mask_blob`: the blob of the item's label map (8-bit PNG, pixel value = index
into the dataset's classes), for datasets of kind `segmentation`; NULL for classification items.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 07:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_items") as batch:
        batch.add_column(sa.Column("mask_blob", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_items") as batch:
        batch.drop_column("mask_blob")
