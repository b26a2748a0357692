"""Fixtures: real servers on free ports, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from sqlalchemy import Engine, text

from shared.observability import configure_logging
from shared.settings import Settings

configure_logging(level="INFO", json=False)

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class LoopThread:
    """An asyncio loop in a background thread: grpc.aio servers run there,
    while the tests talk to them with plain blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def _postgres_database() -> Iterator[str]:
    name = f"llmops_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every test that touches data runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'llmops.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, host="127.0.0.1", log_json=True, _env_file=None)


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


def identity(user: str | None = "alice", roles: str | None = "admin") -> tuple[tuple[str, str], ...]:
    md = []
    if user is not None:
        md.append(("x-user-id", user))
    if roles is not None:
        md.append(("x-user-roles", roles))
    return tuple(md)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


REPO_ROOT = Path(__file__).resolve().parents[1]
Call = Callable[..., Any]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, port: int, admin_port: int, process: Any) -> None:
        self.port = port
        self.admin_port = admin_port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.api = f"{self.url}/llm-ops/v1"
        self.grpc_address = f"127.0.0.1:{port}"


def start_envoy(settings: Settings, clusters: dict[str, tuple[str, int]], out_dir: Path) -> Gateway:
    import subprocess
    import sys
    import time

    import requests

    from shared.gateway import render_envoy_config

    port, admin_port = free_port(), free_port()
    config = render_envoy_config(settings, clusters=clusters, out_dir=out_dir, listen_port=port, admin_port=admin_port)
    log = open(out_dir / "envoy.log", "wb")  # noqa: SIM115
    envoy = Path(sys.executable).parent / "envoy"
    process = subprocess.Popen([str(envoy), "-c", str(config), "--log-level", "warn", "--base-id", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, (out_dir / "envoy.log").read_text()
        try:
            if requests.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status_code == 200:
                return Gateway(port, admin_port, process)
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("envoy did not become ready: " + (out_dir / "envoy.log").read_text())


@pytest.fixture(scope="session")
def reflection(settings: Settings, loop_thread: LoopThread) -> Iterator[str]:
    from reflection.server import start

    running = loop_thread.run(start(settings, port=0))
    yield f"127.0.0.1:{running.port}"
    loop_thread.run(running.stop(0))


@pytest.fixture(scope="session")
def gateway(settings: Settings, registry: ServiceHandle, deployment: ServiceHandle, reflection: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real Envoy in front of the control plane, as `make up` runs it."""
    clusters = {"registry": _split(registry.address), "deployment": _split(deployment.address),
                "reflection": _split(reflection)}
    gw = start_envoy(settings, clusters, tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.process.terminate()
    gw.process.wait(10)


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)
