"""endpoints, revisions, audit records

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 09:23:55.739909
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deployment_audit_records',
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
    with op.batch_alter_table('deployment_audit_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_audit_records_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployment_audit_records_resource_id'), ['resource_id'], unique=False)

    op.create_table('deployment_endpoints',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('route', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('status_reason', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('applied_revision', sa.Integer(), nullable=False),
    sa.Column('desired_replicas', sa.Integer(), nullable=False),
    sa.Column('ready_replicas', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deployment_endpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_endpoints_environment'), ['environment'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployment_endpoints_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployment_endpoints_status'), ['status'], unique=False)
        batch_op.create_index('uq_deployment_endpoints_live_name', ['environment', 'name'], unique=True, sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.create_table('deployment_revisions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('endpoint_id', sa.Uuid(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('parent_revision', sa.Integer(), nullable=True),
    sa.Column('model', sa.JSON(), nullable=False),
    sa.Column('min_replicas', sa.Integer(), nullable=False),
    sa.Column('max_replicas', sa.Integer(), nullable=False),
    sa.Column('cpu_target', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['endpoint_id'], ['deployment_endpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('endpoint_id', 'revision', name='uq_deployment_revisions_endpoint_revision')
    )
    with op.batch_alter_table('deployment_revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_revisions_endpoint_id'), ['endpoint_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('deployment_revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_revisions_endpoint_id'))

    op.drop_table('deployment_revisions')
    with op.batch_alter_table('deployment_endpoints', schema=None) as batch_op:
        batch_op.drop_index('uq_deployment_endpoints_live_name', sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))
        batch_op.drop_index(batch_op.f('ix_deployment_endpoints_status'))
        batch_op.drop_index(batch_op.f('ix_deployment_endpoints_model_id'))
        batch_op.drop_index(batch_op.f('ix_deployment_endpoints_environment'))

    op.drop_table('deployment_endpoints')
    with op.batch_alter_table('deployment_audit_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_audit_records_resource_id'))
        batch_op.drop_index(batch_op.f('ix_deployment_audit_records_at'))

    op.drop_table('deployment_audit_records')
