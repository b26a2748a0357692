"""Migrations when several replicas of a service start at once on one PostgreSQL database, as
the Kubernetes overlays run them (three registry pods, two deployment pods, ...)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from shared.db import migrated_engine
from shared.settings import Settings

from ..helpers import postgres_database

SERVICES = Path(__file__).resolve().parents[2] / "services"
REPLICAS = 4


@pytest.fixture
def fresh_database() -> Iterator[str]:
    for url in postgres_database():
        yield Settings(database_url=url, _env_file=None).database_url  # postgresql+psycopg://


def _replica(url: str, service: str, start, errors) -> None:  # noqa: ANN001 - multiprocessing's proxies
    """One replica's start-up, in a process of its own (alembic's `context` is one per process)."""
    start.wait()
    try:
        migrated_engine(url, service=service, migrations=SERVICES / service / "migrations").dispose()
    except BaseException as exc:  # noqa: BLE001 - reported by the test, with the others
        errors.append(repr(exc))


@pytest.mark.parametrize("service", ["registry", "deployment", "experiment"])
def test_replicas_that_start_together_all_come_up_on_one_schema(fresh_database, service):
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        start, errors = manager.Barrier(REPLICAS), manager.list()
        replicas = [spawn.Process(target=_replica, args=(fresh_database, service, start, errors))
                    for _ in range(REPLICAS)]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.join(120)
        failed = list(errors)
    assert failed == []  # without the migration lock: "duplicate key value violates unique constraint"
    assert [r.exitcode for r in replicas] == [0] * REPLICAS
    engine = create_engine(fresh_database)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text(f"SELECT version_num FROM alembic_version_{service}")).all()
            tables = inspect(connection).get_table_names()
    finally:
        engine.dispose()
    assert len(versions) == 1 and any(t.startswith(f"{service}_") for t in tables)
