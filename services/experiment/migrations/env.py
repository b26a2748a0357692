from alembic import context

from experiment.repository import metadata
from shared.db import run_migrations_online

run_migrations_online(context, metadata, table_prefix="experiment_")
