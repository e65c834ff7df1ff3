"""jobs.expires_at: a job not finished by then ends ``expired``

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Versions before 0006 know no ``expired`` status: such a job reads as cancelled, the
    # final state with the same meaning for its rows (kept) and chunks (never run).
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'expired'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("expires_at")
