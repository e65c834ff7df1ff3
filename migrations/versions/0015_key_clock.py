"""Key clocks: the worker time each owner key received per model, replacing jobs.turn_debt_s

Fair claiming ranks owner keys by the worker time they received (start-time fair queueing)
instead of taking turns with a debt carried into the next turn (core.chunks.fair).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 01:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_clocks",
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("runs_on", sa.String(64), nullable=False),
        sa.Column("clock_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "runs_on", name="pk_key_clocks"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("turn_debt_s")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("turn_debt_s", sa.Float(), nullable=False, server_default="0"))
    op.drop_table("key_clocks")
