"""catalog models, prompt templates, audit records

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 09:05:30.668028
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('registry_audit_records',
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
    with op.batch_alter_table('registry_audit_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_audit_records_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_registry_audit_records_resource_id'), ['resource_id'], unique=False)

    op.create_table('registry_models',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('runtime', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('artifact_uri', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('owner_team', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('reviewed_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('review_notes', sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_registry_models_name_version')
    )
    with op.batch_alter_table('registry_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_models_owner_team'), ['owner_team'], unique=False)
        batch_op.create_index(batch_op.f('ix_registry_models_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_registry_models_type'), ['type'], unique=False)

    op.create_table('registry_prompt_templates',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_registry_prompt_templates_name_version')
    )
    with op.batch_alter_table('registry_prompt_templates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_prompt_templates_endpoint'), ['endpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_registry_prompt_templates_name'), ['name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('registry_prompt_templates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_prompt_templates_name'))
        batch_op.drop_index(batch_op.f('ix_registry_prompt_templates_endpoint'))

    op.drop_table('registry_prompt_templates')
    with op.batch_alter_table('registry_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_models_type'))
        batch_op.drop_index(batch_op.f('ix_registry_models_status'))
        batch_op.drop_index(batch_op.f('ix_registry_models_owner_team'))

    op.drop_table('registry_models')
    with op.batch_alter_table('registry_audit_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_audit_records_resource_id'))
        batch_op.drop_index(batch_op.f('ix_registry_audit_records_at'))

    op.drop_table('registry_audit_records')
