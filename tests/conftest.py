"""Fixtures shared by every layer: the control plane's real servers on free ports, on SQLite and
on the machine's PostgreSQL, and the real Envoy in front of them. The layers:

- tests/unit: no server and no database (pure code, and tools run to completion: kubectl, hadolint);
- tests/service: in-process gRPC services on SQLite and PostgreSQL, the real Envoy in front of them,
  the Kubernetes API mock; `make test-fast` runs unit and service;
- tests/e2e: real Triton replicas (tests/e2e/conftest.py), `make up`, the clients as users run them.

Each test is marked with its layer (`-m "not e2e"`). Plain helpers (no fixtures) live in helpers.py
and triton_helpers.py, the doubles in fakes.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, text

from shared.observability import configure_logging
from shared.settings import Settings

from .helpers import SERVICE_TOKEN, Gateway, LoopThread, postgres_database, split_address, start_envoy

configure_logging(level="INFO", json=False)
LAYERS = ("unit", "service", "e2e")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that touches data runs once on SQLite and once on PostgreSQL; one marked sqlite_only
    (helpers.ON_SQLITE_ONLY) on SQLite alone."""
    if "database_url" in metafunc.fixturenames:
        databases = ["sqlite"] if metafunc.definition.get_closest_marker("sqlite_only") else ["sqlite", "postgresql"]
        metafunc.parametrize("database_url", databases, indirect=True, scope="session")


@pytest.hookimpl(trylast=True)  # after pytest grouped the tests by database
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer, the folder it lives in, and run the layers in order: unit,
    service, e2e. The grouping by database alone interleaves them, and then the e2e stacks (idle
    Triton replicas) stay up while unit and service tests run."""
    for item in items:
        layer = item.path.parent.name
        assert layer in LAYERS, f"{item.nodeid}: a test lives in one of tests/{{{','.join(LAYERS)}}}"
        item.add_marker(layer)
    items.sort(key=lambda item: LAYERS.index(item.path.parent.name))  # stable: each layer keeps its grouping


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The control plane's database, "sqlite" or "postgresql" (pytest_generate_tests says which)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'llmops.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=database_url, host="127.0.0.1", log_json=True, service_token=SERVICE_TOKEN,
                    outcome_journal_dir=tmp_path_factory.mktemp("outcomes"), _env_file=None)


class ServiceHandle:
    def __init__(self, address: str, engine: Engine | None = None) -> None:
        self.address = address
        self.engine = engine
        self.channel = grpc.insecure_channel(address)
        self.service: Any = None

    def count(self, table: str) -> int:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def serve_registry(settings: Settings, loop_thread: LoopThread) -> Iterator[ServiceHandle]:
    """The registry on its database, in the loop thread, until the generator closes (`yield from`)."""
    from registry.server import prepare_database, start

    engine = prepare_database(settings)
    running = loop_thread.run(start(settings, engine=engine, port=0))
    handle = ServiceHandle(f"127.0.0.1:{running.port}", engine)
    yield handle
    handle.channel.close()
    loop_thread.run(running.stop(0))
    engine.dispose()


@pytest.fixture(scope="session")
def registry(settings: Settings, loop_thread: LoopThread) -> Iterator[ServiceHandle]:
    yield from serve_registry(settings, loop_thread)


@pytest.fixture(scope="session")
def fake_runtime(database_url: str):
    """One per database: its endpoints live in that database."""
    from .fakes import FakeRuntime
    return FakeRuntime()


@pytest.fixture(scope="session")
def deployment(settings: Settings, registry: ServiceHandle, loop_thread: LoopThread,
               fake_runtime) -> Iterator[ServiceHandle]:
    """The deployment service on the real registry, with a runtime double (no Triton)."""
    from deployment.server import prepare_database, start

    engine = prepare_database(settings)
    registry_port = int(registry.address.rsplit(":", 1)[1])
    running, service = loop_thread.run(start(settings.model_copy(update={"registry_port": registry_port,
                                                                         "reconcile_interval_s": 0.2}),
                                             engine=engine, runtime=fake_runtime, port=0))
    handle = ServiceHandle(f"127.0.0.1:{running.port}", engine)
    handle.service = service
    yield handle
    handle.channel.close()
    loop_thread.run(running.stop(0))
    loop_thread.run(service.close())
    engine.dispose()


@pytest.fixture(scope="session")
def experiment(settings: Settings, registry: ServiceHandle, deployment: ServiceHandle,
               loop_thread: LoopThread) -> Iterator[ServiceHandle]:
    """The experiment service on the real registry and deployment service."""
    from experiment.server import prepare_database, start

    engine = prepare_database(settings)
    started = loop_thread.run(start(settings.model_copy(update={
        "registry_port": split_address(registry.address)[1], "deployment_port": split_address(deployment.address)[1]}),
        engine=engine, port=0))
    handle = ServiceHandle(f"127.0.0.1:{started.running.port}", engine)
    handle.service = started.service
    yield handle
    handle.channel.close()
    loop_thread.run(started.stop(0))
    engine.dispose()


@pytest.fixture(scope="session")
def reflection(settings: Settings, loop_thread: LoopThread) -> Iterator[str]:
    from reflection.server import start

    running = loop_thread.run(start(settings, port=0))
    yield f"127.0.0.1:{running.port}"
    loop_thread.run(running.stop(0))


@pytest.fixture(scope="session")
def gateway(settings: Settings, registry: ServiceHandle, deployment: ServiceHandle, experiment: ServiceHandle,
            reflection: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real Envoy in front of the control plane, as `make up` runs it."""
    clusters = {"registry": split_address(registry.address), "deployment": split_address(deployment.address),
                "experiment": split_address(experiment.address), "reflection": split_address(reflection)}
    gw = start_envoy(settings, clusters, tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def own_database(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A module's own deployment tables, apart from the session's deployment service's (whose endpoints
    that module's runtime would otherwise start), on the same kind of database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path_factory.mktemp('own-db') / 'deployment.db'}"
    else:
        yield from postgres_database()
