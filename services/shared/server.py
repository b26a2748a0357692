"""The gRPC server factory: servicers, health checking, reflection and the
call interceptor, bound to a port (0 picks a free one and returns it)."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from pydantic import SecretStr
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .identity import AccessTable
from .interceptors import CallInterceptor

log = structlog.get_logger()


@dataclass(frozen=True)
class Servicer:
    """A generated add_*_to_server function, the servicer, and its full service name."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    name: str


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace: float) -> None:
        # Tell balancers first, then finish in-flight calls.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    *, service: str, servicers: list[Servicer], address: str, reflected: list[str] | None = None,
    service_token: SecretStr | None = None, credential_required: bool = False,
) -> RunningServer:
    """Serve servicers at address; reflection describes them (or `reflected`, when given).
    Internal methods answer only callers that present service_token; with credential_required,
    every method but health and reflection does."""
    token = service_token.get_secret_value() if service_token is not None else None
    server = grpc.aio.server(
        interceptors=[CallInterceptor(service, AccessTable([s.name for s in servicers]), service_token=token,
                                      credential_required=credential_required)],
        # Metadata limits well above the gateway's 8 KiB of request headers, so an oversized header
        # is Envoy's 431 and never gRPC's RESOURCE_EXHAUSTED (which the envelope shows as a 429).
        options=[("grpc.so_reuseport", 0), ("grpc.max_metadata_size", 32 * 1024),
                 ("grpc.absolute_max_metadata_size", 64 * 1024)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for s in servicers:
        s.add(s.servicer, server)
    names = [s.name for s in servicers]
    reflection.enable_server_reflection([*(reflected or names), health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", service=service, port=port)
    return RunningServer(server=server, port=port, health=health_servicer)


async def run_until_signalled(running: RunningServer, *, grace: float, on_stop: Callable[[], Any] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    What the process holds once it serves (modules, descriptors, engines) lives as long as it
    does: frozen out of the garbage collector, a full collection no longer walks it. Without
    that, a full collection paused a deployment service with 10,000 endpoints for 36 ms, in
    4 of 300 ListEndpoints calls (p99 41 ms against a p50 of 4.4 ms; frozen, p99 4.7 ms)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("stopping", grace_s=grace)
    await running.stop(grace)
    if on_stop is not None:
        result = on_stop()
        if asyncio.iscoroutine(result):
            await result
