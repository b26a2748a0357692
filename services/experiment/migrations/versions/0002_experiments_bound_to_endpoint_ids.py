"""experiments bound to the id of their endpoint; one running experiment per endpoint id

Experiments from before stay unbound (NULL) until the service binds them to the live endpoint of
their name (service.ExperimentService.follow_endpoints).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 17:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    with op.batch_alter_table('experiment_experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('endpoint_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.drop_index('uq_experiment_running_endpoint', sqlite_where=RUNNING, postgresql_where=RUNNING)
        batch_op.create_index('uq_experiment_running_endpoint_id', ['endpoint_id'], unique=True,
                              sqlite_where=RUNNING, postgresql_where=RUNNING)


def downgrade() -> None:
    with op.batch_alter_table('experiment_experiments', schema=None) as batch_op:
        batch_op.drop_index('uq_experiment_running_endpoint_id', sqlite_where=RUNNING, postgresql_where=RUNNING)
        batch_op.create_index('uq_experiment_running_endpoint', ['endpoint'], unique=True,
                              sqlite_where=RUNNING, postgresql_where=RUNNING)
        batch_op.drop_column('endpoint_id')
