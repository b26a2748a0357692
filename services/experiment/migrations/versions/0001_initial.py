"""experiments, outcomes, audit records

Revision ID: 0001
Revises: 
Create Date: 2026-12-01 22:37:41.707030
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('experiment_audit_records',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('roles', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('experiment_audit_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_audit_records_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_audit_records_resource_id'), ['resource_id'], unique=False)

    op.create_table('experiment_experiments',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('template_a_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('template_b_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('template_a_content', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('template_b_content', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('allocation', sa.Integer(), nullable=False),
    sa.Column('metric', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('model_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('winner_template_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('notes', sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('concluded_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('concluded_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('experiment_experiments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_experiments_endpoint'), ['endpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_experiments_status'), ['status'], unique=False)
        batch_op.create_index('uq_experiment_running_endpoint', ['endpoint'], unique=True, sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))

    op.create_table('experiment_outcomes',
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('experiment_id', sa.Uuid(), nullable=False),
    sa.Column('variant', sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
    sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('error', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('feedback_score', sa.Float(), nullable=True),
    sa.Column('feedback_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('request_id')
    )
    with op.batch_alter_table('experiment_outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_outcomes_experiment_id'), ['experiment_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('experiment_outcomes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_outcomes_experiment_id'))

    op.drop_table('experiment_outcomes')
    with op.batch_alter_table('experiment_experiments', schema=None) as batch_op:
        batch_op.drop_index('uq_experiment_running_endpoint', sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))
        batch_op.drop_index(batch_op.f('ix_experiment_experiments_status'))
        batch_op.drop_index(batch_op.f('ix_experiment_experiments_endpoint'))

    op.drop_table('experiment_experiments')
    with op.batch_alter_table('experiment_audit_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_audit_records_resource_id'))
        batch_op.drop_index(batch_op.f('ix_experiment_audit_records_at'))

    op.drop_table('experiment_audit_records')
