"""DICOMweb: the metadata index on imaging instances (QIDO attributes, pixel and frame offsets).

Revision ID: 0020_dicomweb
Revises: 0019_retention
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_dicomweb"
down_revision = "0019_retention"
branch_labels = None
depends_on = None

TEXT = (("study_time", 16), ("accession_number", 16), ("patient_name", 64), ("study_id", 16),
        ("study_description", 64), ("series_description", 64), ("transfer_syntax_uid", 64))
NUMBERS = ("series_number", "instance_number", "rows", "columns")
INDEXES = (("ix_imaging_instances_study", ["project_id", "study_uid"]),
           ("ix_imaging_instances_series", ["project_id", "series_uid"]),
           ("ix_imaging_instances_date", ["project_id", "study_date"]),
           ("ix_imaging_instances_patient", ["project_id", "patient_pseudonym"]),
           ("ix_imaging_instances_accession", ["project_id", "accession_number"]),
           ("ix_imaging_instances_index_version", ["index_version", "id"]))


def upgrade() -> None:
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        for name, length in TEXT:
            batch_op.add_column(sa.Column(name, sa.String(length=length), nullable=False, server_default=""))
        for name in NUMBERS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("number_of_frames", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("pixel_offset", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                      nullable=True))
        batch_op.add_column(sa.Column("frames", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("index_version", sa.Integer(), nullable=False, server_default="0"))
        for name, columns in INDEXES:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        for name, _ in INDEXES:
            batch_op.drop_index(name)
        for name in ("index_version", "frames", "pixel_offset", "number_of_frames", *NUMBERS,
                     *(n for n, _ in TEXT)):
            batch_op.drop_column(name)
