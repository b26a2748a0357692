"""Fixtures of the service tests beyond the root conftest's: the real router behind the real Envoy
with replicas that speak Triton's protocol (no model), and the Kubernetes API mock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import kmock
import pytest
from tritonclient.grpc import service_pb2_grpc

from llmops.v1 import deployment_pb2_grpc, experiment_pb2_grpc
from shared.settings import Settings

from ..fakes import (
    ENDPOINT_SLICES, LEASES, ApplyingEmulator, Cluster, FakeDeployment, FakeExperiments, FakeTriton, routed,
)
from ..helpers import SERVICE_TOKEN, Gateway, LoopThread, start_envoy


@dataclass
class FakeServing:
    gateway: Gateway
    router_address: str
    triton: FakeTriton  # serves chat-model (model llm) and embedding-model (model e5)


@pytest.fixture(scope="session")
def fake_serving(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServing]:
    """The router as `make up` runs it, behind Envoy, following a route watch of chat-model and
    embedding-model on one FakeTriton: what the router decides on its own (validation, refusals,
    the OpenAI shapes of its errors) without a model behind it. Its deadline stays short: nothing
    here waits on a real model."""
    from router.server import start as start_router

    triton = FakeTriton()

    async def serve() -> tuple[grpc.aio.Server, str, str]:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(triton, server)
        triton_port = server.add_insecure_port("127.0.0.1:0")
        replica = f"127.0.0.1:{triton_port}"
        deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
            FakeDeployment([routed("chat-model", [replica]), routed("embedding-model", [replica], "embedding")]),
            server)
        experiment_pb2_grpc.add_ExperimentServiceServicer_to_server(FakeExperiments(), server)
        control_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, replica, str(control_port)

    server, _, control_port = loop_thread.run(serve())
    root = tmp_path_factory.mktemp("fake-serving")
    settings = Settings(_env_file=None, host="127.0.0.1", service_token=SERVICE_TOKEN, rate_limit_per_minute=0,
                        deployment_address=f"127.0.0.1:{control_port}", experiment_address=f"127.0.0.1:{control_port}",
                        outcome_journal_dir=root / "outcomes", router_request_timeout_s=10)
    router = loop_thread.run(start_router(settings, port=0))
    gateway = start_envoy(settings, {"router": ("127.0.0.1", router.running.port)}, root)
    try:
        deadline = time.monotonic() + 30
        while len(router.table.routes) < 2:  # the watch's snapshot, right after it connects
            assert time.monotonic() < deadline, "the router never got the fake route watch's snapshot"
            time.sleep(0.05)
        yield FakeServing(gateway, f"127.0.0.1:{router.running.port}", triton)
    finally:
        gateway.stop()
        loop_thread.run(router.running.stop(0))
        loop_thread.run(router.close())
        loop_thread.run(server.stop(0))



@pytest.fixture()
def cluster(loop_thread) -> Iterator[Cluster]:
    async def start() -> tuple[ApplyingEmulator, kmock.Server]:
        emulator = ApplyingEmulator()
        for resource in (ENDPOINT_SLICES, LEASES):  # listed before any exists: an empty list, as a real API answers
            emulator.resources[resource] = {}
        await emulator.__aenter__()
        server = kmock.Server(emulator)
        await server.__aenter__()
        return emulator, server

    async def stop(emulator: ApplyingEmulator, server: kmock.Server) -> None:
        await server.__aexit__(None, None, None)
        await emulator.__aexit__(None, None, None)

    emulator, server = loop_thread.run(start())
    handle = Cluster(emulator, str(server.url).rstrip("/"))
    yield handle
    handle.close()
    loop_thread.run(stop(emulator, server))
