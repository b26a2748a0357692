"""The registry and the deployment service, as the experiment service sees them:
prompt templates, the endpoint an experiment runs on (asked over gRPC with the
caller's identity), and which endpoints are live (the deployment service's watch,
followed with the service's own identity, as the router follows it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from pydantic import SecretStr

from llmops.v1 import deployment_pb2, deployment_pb2_grpc, registry_pb2, registry_pb2_grpc
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.identity import Identity, service_metadata
from shared.observability import request_id_metadata

from .domain import TemplateRef

# Who follows the endpoint watch (an internal method) and stops the experiments of deleted endpoints.
EXPERIMENT_SERVICE = Identity("svc-experiment", frozenset({"admin"}))


@dataclass(frozen=True)
class EndpointRef:
    id: str
    model_type: str


@dataclass(frozen=True)
class EndpointEvent:
    """snapshot: the live endpoints (id -> name); delete: the ids of deleted endpoints."""

    kind: str
    endpoints: dict[str, str]


def _unavailable(what: str, exc: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(f"the {what} is unavailable ({exc.code().name}); try again", reason=f"{what.upper()}_UNAVAILABLE")


class Catalog:
    def __init__(self, *, registry_address: str, deployment_address: str, environment: str,
                 service_token: SecretStr | None = None, timeout_s: float = 10.0) -> None:
        self._credential = service_metadata(service_token)
        self._channels = [grpc.aio.insecure_channel(registry_address), grpc.aio.insecure_channel(deployment_address)]
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channels[0])
        self._deployment = deployment_pb2_grpc.DeploymentServiceStub(self._channels[1])
        self._environment = environment
        self._timeout = timeout_s

    def _metadata(self, actor: Identity) -> tuple[tuple[str, str], ...]:
        """Who asks, the platform's credential, and the request being handled (for its log lines there)."""
        return actor.metadata() + self._credential + request_id_metadata()

    async def template(self, template_id: str, field: str, *, actor: Identity) -> TemplateRef:
        try:
            t = await self._registry.GetPromptTemplate(registry_pb2.GetPromptTemplateRequest(id=template_id),
                                                       metadata=self._metadata(actor), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{field}: prompt template {template_id} not found", reason="TEMPLATE_NOT_FOUND") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"{field}: {exc.details()}", reason="INVALID_TEMPLATE_ID") from exc
            raise _unavailable("registry", exc) from exc
        return TemplateRef(id=t.id, name=t.name, content=t.content, model_type=t.model_type, endpoint=t.endpoint)

    async def endpoint(self, name: str, *, actor: Identity) -> EndpointRef:
        """The live endpoint `name` of this environment: its id and the type of the model it serves."""
        try:
            found = await self._deployment.ListEndpoints(
                deployment_pb2.ListEndpointsRequest(environment=self._environment, name=name, page_size=1),
                metadata=self._metadata(actor), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("deployment service", exc) from exc
        if not found.endpoints:
            raise NotFound(f"no serving endpoint named {name!r} in {self._environment}; deploy it first",
                           reason="ENDPOINT_NOT_FOUND")
        try:
            model = await self._registry.GetModel(registry_pb2.GetModelRequest(id=found.endpoints[0].model_id),
                                                  metadata=self._metadata(actor), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("registry", exc) from exc
        return EndpointRef(id=found.endpoints[0].id, model_type=model.type)

    async def endpoint_events(self) -> AsyncIterator[EndpointEvent]:
        """The deployment service's WatchEndpoints for this environment: a snapshot of the live endpoints,
        then each deletion (changes to live endpoints are skipped). Ends with Unavailable when the watch
        does; the caller opens it again."""
        watch = self._deployment.WatchEndpoints(
            deployment_pb2.WatchEndpointsRequest(environment=self._environment),
            metadata=EXPERIMENT_SERVICE.metadata() + self._credential)
        try:
            async for event in watch:
                if event.kind in ("snapshot", "delete"):
                    yield EndpointEvent(event.kind, {e.endpoint.id: e.endpoint.name for e in event.endpoints})
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("deployment service", exc) from exc
        finally:
            watch.cancel()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
