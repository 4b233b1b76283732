"""De-identification on ingest: pseudonymous patient keys and restricted originals

Adds `cases.patient_key` (keyed HMAC of the DICOM PatientID, indexed to filter one patient's
cases), `images.burned_in_annotation` (false on existing rows), and `original_images`: the
uploads as received where the site keeps originals, served to admins only.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import clearscan.db.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("patient_key", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_cases_patient_key"), ["patient_key"], unique=False)
    with op.batch_alter_table("images") as batch:
        batch.add_column(
            sa.Column(
                "burned_in_annotation", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
    op.create_table(
        "original_images",
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", clearscan.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_original_images_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_original_images")),
    )


def downgrade() -> None:
    op.drop_table("original_images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("burned_in_annotation")
    with op.batch_alter_table("cases") as batch:
        batch.drop_index(batch.f("ix_cases_patient_key"))
        batch.drop_column("patient_key")
