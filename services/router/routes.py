"""The route table: live endpoints of this environment and their ready
replicas, kept in memory from the deployment service's WatchEndpoints
stream. Requests never ask the control plane; when it is down the table
keeps serving what it last knew and catches up on reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from pydantic import SecretStr

from llmops.v1 import deployment_pb2, deployment_pb2_grpc

from .watch import follow_watch, internal_call_metadata


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
    created: int = 0  # when the endpoint was deployed, Unix seconds


def route_from_proto(routed: deployment_pb2.RoutedEndpoint) -> Route:
    return Route(
        endpoint_id=routed.endpoint.id, name=routed.endpoint.name, environment=routed.endpoint.environment,
        status=routed.endpoint.status, model_name=routed.model.name, model_version=routed.model.version,
        model_type=routed.model.type, metadata=json_format.MessageToDict(routed.model.metadata),
        triton_model=routed.triton_model,
        replicas=tuple(r.grpc_address for r in routed.replicas if r.ready),
        created=routed.endpoint.created_at.seconds,
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
    request = deployment_pb2.WatchEndpointsRequest(environment=environment)
    metadata = internal_call_metadata(service_token)
    await follow_watch(address, lambda channel: deployment_pb2_grpc.DeploymentServiceStub(channel).WatchEndpoints(
        request, metadata=metadata), table.apply, what="route")
