"""The route table: live endpoints of the served environments and their
ready replicas, by (environment, endpoint name), kept in memory from the
deployment service's WatchEndpoints stream. Requests never ask the control
plane; when it is down the table keeps serving what it last knew and catches
up on reconnect. Which environment a request is for, the gateway says
(shared/environments.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from pydantic import SecretStr

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.errors import NotFound
from shared.model_limits import replica_slots
from shared.settings import ENVIRONMENT_NAMES

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
    runtime: str = ""  # the model's: llamacpp, embedding, echo, tensorrt_llm
    slots: int = 1  # requests each replica runs at once (shared.model_limits.replica_slots)


def route_from_proto(routed: deployment_pb2.RoutedEndpoint) -> Route:
    metadata = json_format.MessageToDict(routed.model.metadata)
    return Route(
        endpoint_id=routed.endpoint.id, name=routed.endpoint.name, environment=routed.endpoint.environment,
        status=routed.endpoint.status, model_name=routed.model.name, model_version=routed.model.version,
        model_type=routed.model.type, metadata=metadata, triton_model=routed.triton_model,
        replicas=tuple(r.grpc_address for r in routed.replicas if r.ready),
        created=routed.endpoint.created_at.seconds,
        runtime=routed.model.runtime, slots=replica_slots(routed.model.runtime, metadata),
    )


@dataclass
class RouteTable:
    # The environments served: the watch's endpoints of any other are not kept.
    environments: tuple[str, ...] = ENVIRONMENT_NAMES
    # A request that names no environment (one that did not come through the gateway) is for this one.
    default_environment: str = "dev"
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)  # by (environment, endpoint name)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    # Called after every applied event, e.g. to let go of clients of replicas that left.
    listeners: list[Callable[[RouteTable], None]] = field(default_factory=list)

    def get(self, name: str, environment: str | None = None) -> Route | None:
        return self.routes.get((environment or self.default_environment, name))

    def of_environment(self, environment: str) -> list[Route]:
        return sorted((r for (e, _), r in self.routes.items() if e == environment), key=lambda r: r.name)

    def environment_of(self, requested: str | None) -> str:
        """The environment a request is for: the one the gateway named, else the default; 404 for one
        that is not served here (a Host such as stg.llm-ops.local where only dev and prod are)."""
        environment = requested or self.default_environment
        if environment not in self.environments:
            raise NotFound(f"environment {environment!r} is not served here; this platform serves "
                           f"{', '.join(self.environments)}", reason="ENVIRONMENT_NOT_SERVED")
        return environment

    def replica_addresses(self) -> set[str]:
        return {address for route in self.routes.values() for address in route.replicas}

    def apply(self, event: deployment_pb2.WatchEndpointsResponse) -> None:
        if event.kind == "snapshot":
            self.routes = {}
        for routed in event.endpoints:
            if event.kind == "delete" or routed.endpoint.status == "deleted":
                # A delete names only the id; the key (environment, name) never changes for an endpoint.
                for key in [k for k, r in self.routes.items() if r.endpoint_id == routed.endpoint.id]:
                    del self.routes[key]
                continue
            route = route_from_proto(routed)
            if route.environment in self.environments:
                self.routes[(route.environment, route.name)] = route
        self.synced.set()
        for listener in self.listeners:
            listener(self)


async def follow(table: RouteTable, *, address: str, service_token: SecretStr | None = None) -> None:
    """Keep table in step with the deployment service, forever, reconnecting with backoff."""
    # One environment: the deployment service filters; several: all of them, and the table keeps its own.
    request = deployment_pb2.WatchEndpointsRequest(
        environment=table.environments[0] if len(table.environments) == 1 else "")
    metadata = internal_call_metadata(service_token)
    await follow_watch(address, lambda channel: deployment_pb2_grpc.DeploymentServiceStub(channel).WatchEndpoints(
        request, metadata=metadata), table.apply, what="route")
