"""Item metadata: items.metadata, an input's kept columns or JSON ``metadata`` (strings),
carried into every export

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 16:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        # NULL: the input carried no metadata (every item stored before 0012).
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("metadata")
