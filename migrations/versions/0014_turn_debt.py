"""Turn debt: jobs.turn_ends_at and jobs.turn_debt_s, deficit round-robin for fair claiming

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 22:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("turn_ends_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("turn_debt_s", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("turn_debt_s")
        batch.drop_column("turn_ends_at")
