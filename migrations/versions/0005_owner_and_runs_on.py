"""trained_models.owner_key_id: a trained model's name belongs to the key that trained it;
jobs.runs_on: the model whose workers run a job's chunks (a training job's base), and a chunk
for every training job

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
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('runs_on', sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE jobs SET runs_on = COALESCE("
        "(SELECT training_runs.base FROM training_runs WHERE training_runs.job_id = jobs.id), "
        "jobs.model)"
    )
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('runs_on', existing_type=sa.String(length=64), nullable=False)
    # A training job is now one chunk (0: [0, 1)) under the chunk lease and sweeps. One made
    # before has none: give it one, queued while the job is active (the lost-message sweep
    # then sends it to its base's queue), finished otherwise.
    op.execute(
        "INSERT INTO chunks (job_id, \"index\", start, stop, status, attempts, updated_at) "
        "SELECT jobs.id, 0, 0, 1, "
        "CASE WHEN jobs.status IN ('queued', 'running') THEN 'queued' ELSE 'done' END, "
        "0, jobs.created_at FROM jobs JOIN training_runs ON training_runs.job_id = jobs.id "
        "WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.job_id = jobs.id)"
    )


def downgrade() -> None:
    op.execute("DELETE FROM chunks WHERE job_id IN (SELECT job_id FROM training_runs)")
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('runs_on')
    with op.batch_alter_table('trained_models') as batch:
        batch.drop_constraint('fk_trained_models_owner_key_id_api_keys', type_='foreignkey')
        batch.drop_column('owner_key_id')
