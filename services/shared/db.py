"""Database engines, sessions and alembic migrations.

SQLite file by default (WAL, so several service processes share it),
PostgreSQL through psycopg 3 when LLMOPS_DATABASE_URL says so. Each service
keeps its own tables and its own alembic version table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, create_engine

from .errors import AlreadyExists


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


@contextmanager
def transaction(engine: Engine, *, conflict: str = "already exists") -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, and turn a
    unique-constraint violation into AlreadyExists (409).

    On SQLite it takes the database's write lock as it begins (BEGIN IMMEDIATE; other writers
    wait up to the connection's 30 s timeout): SELECT ... FOR UPDATE locks nothing there, and a
    deferred transaction reads before it locks, so two concurrent checks of one row (a status
    transition, an experiment's conclusion) would both pass. Readers are not held up (WAL)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            if engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise AlreadyExists(conflict) from exc
        except BaseException:
            session.rollback()
            raise


def migrated_engine(url: str, *, service: str, migrations: Path) -> Engine:
    """An engine on url with the service's tables at the newest migration."""
    engine = make_engine(url)
    migrate(engine, script_location=migrations, version_table=f"alembic_version_{service}")
    return engine


def migrate(engine: Engine, *, script_location: Path, version_table: str) -> None:
    """Bring a service's tables to the newest migration (run before serving)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["engine"] = engine
    config.attributes["version_table"] = version_table
    command.upgrade(config, "head")


def run_migrations_online(context, target_metadata, *, table_prefix: str) -> None:  # noqa: ANN001
    """Body of every service's alembic env.py. SQLModel keeps one metadata for
    all services; a service only ever sees the tables with its own prefix."""
    config = context.config
    engine: Engine = config.attributes["engine"]

    def own_tables(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is None or table.name.startswith(table_prefix)

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas that start together (Kubernetes) would each create the same tables: one migrates,
            # the others wait here until it commits, then find the schema at head. The lock is the
            # transaction's, so it is released with it, however the migration ends.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:table))"),
                               {"table": config.attributes["version_table"]})
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=own_tables,
            version_table=config.attributes["version_table"],
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
