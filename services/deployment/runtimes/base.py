"""The contract between the deployment service and a serving runtime."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from collections.abc import Callable
from typing import Protocol

from ..domain import ModelSnapshot


@dataclass(frozen=True)
class ServingSpec:
    """One revision of an endpoint: the runtime makes it the one serving."""

    endpoint_id: str
    name: str          # the {name} of /llm-ops/v1/serve/{name}
    environment: str   # dev | stg | prod
    route: str
    revision: int
    model: ModelSnapshot
    min_replicas: int
    max_replicas: int
    cpu_target: int    # autoscalePolicy.cpuUtilization, percent


class Health(StrEnum):
    DEPLOYING = "deploying"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True)
class ReplicaState:
    id: str
    grpc_address: str  # host:port of Triton's KServe v2 gRPC endpoint
    ready: bool
    revision: int


@dataclass(frozen=True)
class RuntimeStatus:
    health: Health
    reason: str
    desired_replicas: int
    ready_replicas: int
    # Name of the model inside Triton that requests go to.
    triton_model: str = ""
    replicas: tuple[ReplicaState, ...] = ()


class ServingRuntime(Protocol):
    """Implemented by LocalRuntime and KubernetesRuntime.

    apply() is blue/green: the new revision's replicas become ready before the
    old revision's stop taking traffic, and apply() returns once the switch is
    done (or raises RuntimeFailure). Calls for one endpoint are serialised by
    the caller. The runtime calls on_change(endpoint_id) whenever the set of
    ready replicas changes (a switch, a restart, a scale), so the router
    learns it before old replicas stop."""

    on_change: Callable[[str], None] | None

    async def start(self) -> None:
        """Adopt or clean up what an earlier run of the service left behind."""

    async def apply(self, spec: ServingSpec) -> None: ...

    async def remove(self, endpoint_id: str) -> None:
        """Stop every replica of the endpoint; idempotent."""

    async def status(self, endpoint_id: str) -> RuntimeStatus: ...

    async def close(self) -> None:
        """Stop background work. Local replicas keep running for the next start() to adopt."""


class RuntimeFailure(Exception):
    """The runtime could not bring a revision up (bad artifact, crash loop, timeout)."""
