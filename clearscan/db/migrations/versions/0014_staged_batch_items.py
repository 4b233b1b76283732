"""Batch items of an archive are staged, not stored as blobs

An archive's images are raw uploads (DICOM before de-identification). They are now kept in the
blob store's staging area until the item is analysed, then deleted: `batch_items.staged` is the
staging key (NULL for items of stored images, and for items written before this revision, whose
bytes are blobs). `batch_items.sha256` becomes `digest`: the sha256 of the item's bytes, which
is a blob address only for items without a staging key.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batch_items") as batch:
        batch.alter_column("sha256", new_column_name="digest", existing_type=sa.String(64))
        batch.add_column(sa.Column("staged", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_items") as batch:
        batch.drop_column("staged")
        batch.alter_column("digest", new_column_name="sha256", existing_type=sa.String(64))
