"""Imaging: each project key's pseudonym scheme (``imaging_projects.pseudonym_scheme``): how a patient ID becomes
the input of the patient's pseudonym and date shift. 1: as received (every key before this revision); 2: a
personnummer or samordningsnummer in any written form is one patient (``patient_ids.canonical_patient_key``).

A project that has pseudonymised patients keeps 1: another key per patient would split each of them in two
across its old and new data. A project whose key gave no patient a pseudonym yet moves to 2: no imported
instance (archived, quarantined or published; every one of them holds a patient pseudonym), no patient in its
key store, no import batch still open (objects of it may be de-identified and not recorded yet), no passed
strategy run (its output is in the archive) and no ``strategy apply --project`` on the hub host (its output
left the hub). Rows written without the column (code before this revision) get 1.

Revision ID: 0039_pseudonym_scheme
Revises: 0038_job_given_up
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0039_pseudonym_scheme"
down_revision = "0038_job_given_up"
branch_labels = None
depends_on = None

PSEUDONYMISED = """
    EXISTS (SELECT 1 FROM imaging_instances i WHERE i.project_id = imaging_projects.project_id)
    OR EXISTS (SELECT 1 FROM imaging_pseudonyms p
               WHERE p.project_id = imaging_projects.project_id AND p.kind = 'PatientID')
    OR EXISTS (SELECT 1 FROM imaging_batches b
               WHERE b.project_id = imaging_projects.project_id AND b.state = 'open')
    OR EXISTS (SELECT 1 FROM strategy_runs r
               WHERE r.project_id = imaging_projects.project_id AND r.state = 'passed')
    OR EXISTS (SELECT 1 FROM audit_events e
               WHERE e.project_id = imaging_projects.project_id AND e.action = 'strategy.applied')
"""


def upgrade() -> None:
    with op.batch_alter_table("imaging_projects") as batch:
        batch.add_column(sa.Column("pseudonym_scheme", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.execute(f"UPDATE imaging_projects SET pseudonym_scheme = 2 WHERE NOT ({PSEUDONYMISED})")


def downgrade() -> None:
    # The code before this revision keys every project's patients as received: a project pseudonymised under
    # scheme 2 since gives its patients other pseudonyms from then on.
    with op.batch_alter_table("imaging_projects") as batch:
        batch.drop_column("pseudonym_scheme")
