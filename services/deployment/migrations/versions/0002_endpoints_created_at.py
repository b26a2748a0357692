"""live endpoints listed newest first from an index, not a sort of the whole table

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployment_endpoints', schema=None) as batch_op:
        batch_op.create_index('ix_deployment_endpoints_live_created', [sa.text('created_at DESC'), 'id'],
                              unique=False, sqlite_where=sa.text('deleted_at IS NULL'),
                              postgresql_where=sa.text('deleted_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('deployment_endpoints', schema=None) as batch_op:
        batch_op.drop_index('ix_deployment_endpoints_live_created', sqlite_where=sa.text('deleted_at IS NULL'),
                            postgresql_where=sa.text('deleted_at IS NULL'))
