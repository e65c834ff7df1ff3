"""The result cache: result_cache, results.cached and jobs.use_cache

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_cache",
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_revision", sa.String(200), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("top_k", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "model_revision", "input_sha256", name="pk_result_cache"),
    )
    op.create_index("ix_result_cache_created_at", "result_cache", ["created_at"])
    # Existing rows were all scored by a forward pass, and existing jobs keep the default.
    with op.batch_alter_table("results") as batch:
        batch.add_column(
            sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("use_cache", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("use_cache")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("cached")
    op.drop_index("ix_result_cache_created_at", table_name="result_cache")
    op.drop_table("result_cache")
