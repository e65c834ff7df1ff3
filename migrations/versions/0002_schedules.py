"""schedules: schedule_runs (the claim per due time), schedule_state, schedule_files

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 22:10:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('schedule_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('schedule', sa.String(length=64), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('window_start', sa.JSON(), nullable=True),
    sa.Column('window_end', sa.JSON(), nullable=True),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_schedule_runs_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_runs')),
    # The claim: one run per schedule and due time.
    sa.UniqueConstraint('schedule', 'due_at', name='uq_schedule_runs_schedule_due_at')
    )
    with op.batch_alter_table('schedule_runs', schema=None) as batch_op:
        batch_op.create_index('ix_schedule_runs_status', ['status'], unique=False)

    op.create_table('schedule_state',
    sa.Column('schedule', sa.String(length=64), nullable=False),
    sa.Column('watermark', sa.JSON(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('schedule', name=op.f('pk_schedule_state'))
    )
    op.create_table('schedule_files',
    sa.Column('schedule', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('schedule', 'path', name=op.f('pk_schedule_files'))
    )


def downgrade() -> None:
    op.drop_table('schedule_files')
    op.drop_table('schedule_state')
    with op.batch_alter_table('schedule_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_schedule_runs_status')

    op.drop_table('schedule_runs')
