"""Retry, resume and input checks: retry_items, jobs.inputs_hash, schedule_files content

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per error row waiting to be replaced by a retry (core.jobs.retry_marks).
    op.create_table(
        "retry_items",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_retry_items_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "index", name="pk_retry_items"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("inputs_hash", sa.String(64), nullable=True))
    with op.batch_alter_table("schedule_files") as batch:
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rows", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedule_files") as batch:
        batch.drop_column("rows")
        batch.drop_column("sha256")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("inputs_hash")
    op.drop_table("retry_items")
