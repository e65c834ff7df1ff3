"""Retention: jobs.inputs_purged_at, jobs.results_purged_at, and purge_runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 17:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # NULL: the job's inputs (results) are all there, as for every job before 0011.
        batch.add_column(sa.Column("inputs_purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("results_purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "purge_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("input_rows", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("result_rows", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("dry_run", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_runs")),
    )


def downgrade() -> None:
    op.drop_table("purge_runs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_purged_at")
        batch.drop_column("inputs_purged_at")
