"""trained_models.owner_key_id: a trained model's name belongs to the key that trained it

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trained_models') as batch:
        batch.add_column(sa.Column('owner_key_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(
            'fk_trained_models_owner_key_id_api_keys', 'api_keys', ['owner_key_id'], ['id']
        )
    # Each version was registered by its training job: its owner is that job's key (NULL for
    # `bulkscore train`, the operator's, and for a version whose job is gone).
    op.execute(
        "UPDATE trained_models SET owner_key_id = "
        "(SELECT jobs.owner_key_id FROM jobs WHERE jobs.id = trained_models.job_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('trained_models') as batch:
        batch.drop_constraint('fk_trained_models_owner_key_id_api_keys', type_='foreignkey')
        batch.drop_column('owner_key_id')
