"""jobs.driver: which driver scores a job's chunks ("service" workers or one "embedded" process)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs made before this revision were all left to the service's sweeps: "service".
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(
            sa.Column('driver', sa.String(length=16), nullable=False, server_default='service')
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('driver')
