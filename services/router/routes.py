"""The route table: live endpoints of this environment and their ready
replicas, kept in memory from the deployment service's WatchEndpoints
stream. Requests never ask the control plane; when it is down the table
keeps serving what it last knew and catches up on reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import json_format
from pydantic import SecretStr

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.identity import Identity, service_metadata

log = structlog.get_logger()
ROUTER_IDENTITY = Identity("svc-router", frozenset({"admin"}))
WATCH_BACKOFF_MAX_S = 1.0
# A fresh connection per attempt: channels to one address share a process-wide subchannel whose
# reconnect backoff (up to 2 minutes) would keep failing new channels fast after the service is back.
WATCH_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 200),
                         ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass(frozen=True)
class Route:
    endpoint_id: str
    name: str
    environment: str
    status: str
    model_name: str
    model_version: str
    model_type: str
    metadata: dict[str, Any]
    triton_model: str
    replicas: tuple[str, ...]  # grpc addresses of ready replicas


def route_from_proto(routed: deployment_pb2.RoutedEndpoint) -> Route:
    return Route(
        endpoint_id=routed.endpoint.id, name=routed.endpoint.name, environment=routed.endpoint.environment,
        status=routed.endpoint.status, model_name=routed.model.name, model_version=routed.model.version,
        model_type=routed.model.type, metadata=json_format.MessageToDict(routed.model.metadata),
        triton_model=routed.triton_model,
        replicas=tuple(r.grpc_address for r in routed.replicas if r.ready),
    )


@dataclass
class RouteTable:
    routes: dict[str, Route] = field(default_factory=dict)  # by endpoint name
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    # Called after every applied event, e.g. to let go of clients of replicas that left.
    listeners: list[Callable[[RouteTable], None]] = field(default_factory=list)

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)

    def replica_addresses(self) -> set[str]:
        return {address for route in self.routes.values() for address in route.replicas}

    def apply(self, event: deployment_pb2.WatchEndpointsResponse) -> None:
        if event.kind == "snapshot":
            self.routes = {}
        for routed in event.endpoints:
            if event.kind == "delete" or routed.endpoint.status == "deleted":
                # A delete names only the id; routes are keyed by name, which never changes.
                for name in [n for n, r in self.routes.items() if r.endpoint_id == routed.endpoint.id]:
                    del self.routes[name]
                continue
            route = route_from_proto(routed)
            self.routes[route.name] = route
        self.synced.set()
        for listener in self.listeners:
            listener(self)


async def follow(table: RouteTable, *, address: str, environment: str,
                 service_token: SecretStr | None = None) -> None:
    """Keep table in step with the deployment service, forever, reconnecting with backoff."""
    metadata = ROUTER_IDENTITY.metadata() + service_metadata(service_token and service_token.get_secret_value())
    backoff = 0.2
    while True:
        channel = grpc.aio.insecure_channel(address, options=WATCH_CHANNEL_OPTIONS)
        try:
            stub = deployment_pb2_grpc.DeploymentServiceStub(channel)
            stream = stub.WatchEndpoints(deployment_pb2.WatchEndpointsRequest(environment=environment),
                                         metadata=metadata)
            async for event in stream:
                table.apply(event)
                backoff = 0.2
        except grpc.aio.AioRpcError as exc:
            log.warning("route watch interrupted; serving from cache", code=exc.code().name, retry_in_s=backoff)
        except Exception:  # noqa: BLE001 - a watcher that dies leaves the table stale forever
            log.exception("route watch failed; serving from cache", retry_in_s=backoff)
        finally:
            await channel.close()  # CancelledError (a BaseException) still propagates after this
        await asyncio.sleep(backoff)
        # At most 1 s: a restarted deployment service switches and drains replicas within seconds,
        # and a table that missed the switch would send work to replicas that are stopping.
        backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)
