"""Endpoint and revision rules, free of I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.errors import FailedPrecondition, InvalidArgument
from shared.validation import ENDPOINT_NAME, ENDPOINT_ROUTE_PREFIX

MAX_REPLICAS = 20
DEFAULT_CPU_TARGET = 70


class Environment(StrEnum):
    DEV = "dev"
    STG = "stg"
    PROD = "prod"


class EndpointStatus(StrEnum):
    DEPLOYING = "deploying"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"
    ROLLBACK = "rollback"
    DELETED = "deleted"


class RevisionReason(StrEnum):
    DEPLOY = "deploy"
    UPDATE = "update"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ModelSnapshot:
    """The catalog entry as it was when the revision was made: a rollback
    re-runs exactly that, without asking the registry again."""

    id: str
    name: str
    version: str
    type: str
    runtime: str
    artifact_uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingConfig:
    """What a revision pins: the model and the scaling bounds."""

    model: ModelSnapshot
    min_replicas: int
    max_replicas: int
    cpu_target: int


@dataclass(frozen=True)
class Revision:
    number: int
    # The revision that was active when this one was made: what a rollback returns to.
    parent: int | None
    config: ServingConfig
    reason: RevisionReason
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    name: str
    route: str
    environment: Environment
    config: ServingConfig
    status: EndpointStatus
    status_reason: str
    revision: int
    applied_revision: int
    desired_replicas: int
    ready_replicas: int
    created_at: datetime
    updated_at: datetime

    @property
    def live(self) -> bool:
        return self.status != EndpointStatus.DELETED


@dataclass(frozen=True)
class EndpointFilter:
    environment: Environment | None = None
    model_id: str | None = None
    status: EndpointStatus | None = None
    name: str | None = None


@dataclass(frozen=True)
class ConfigChange:
    """A PATCH: None keeps the current value."""

    model_id: str | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_target: int | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.model_id, self.min_replicas, self.max_replicas, self.cpu_target))


def endpoint_name_from_route(route: str) -> str:
    """/llm-ops/v1/serve/{name} -> name, or InvalidArgument."""
    name = route[len(ENDPOINT_ROUTE_PREFIX):] if route.startswith(ENDPOINT_ROUTE_PREFIX) else ""
    if not name or not ENDPOINT_NAME.match(name):
        raise InvalidArgument(
            f"route must be {ENDPOINT_ROUTE_PREFIX}{{name}} where name is a lowercase DNS label "
            f"(a-z, 0-9, '-', at most 63 characters); got {route[:100]!r}", reason="INVALID_ROUTE")
    return name


def check_bounds(min_replicas: int, max_replicas: int, cpu_target: int) -> None:
    if min_replicas < 1:
        raise InvalidArgument("minReplicas must be at least 1", reason="INVALID_REPLICAS")
    if max_replicas < min_replicas:
        raise InvalidArgument(f"maxReplicas ({max_replicas}) must not be less than minReplicas ({min_replicas})",
                              reason="INVALID_REPLICAS")
    if max_replicas > MAX_REPLICAS:
        raise InvalidArgument(f"maxReplicas must be at most {MAX_REPLICAS}", reason="INVALID_REPLICAS")
    if not 1 <= cpu_target <= 100:
        raise InvalidArgument("autoscalePolicy.cpuUtilization must be between 1 and 100",
                              reason="INVALID_AUTOSCALE_POLICY")


def check_servable(model: ModelSnapshot, *, approved: bool, status: str) -> None:
    if not approved:
        raise FailedPrecondition(f"model {model.id} is {status}, not approved: only approved models can be deployed",
                                 reason="MODEL_NOT_APPROVED")


def apply_change(current: ServingConfig, change: ConfigChange, model: ModelSnapshot | None) -> ServingConfig:
    config = replace(
        current,
        model=model or current.model,
        min_replicas=current.min_replicas if change.min_replicas is None else change.min_replicas,
        max_replicas=current.max_replicas if change.max_replicas is None else change.max_replicas,
        cpu_target=current.cpu_target if change.cpu_target is None else change.cpu_target,
    )
    check_bounds(config.min_replicas, config.max_replicas, config.cpu_target)
    return config


def rollback_target(active: Revision) -> int:
    if active.parent is None:
        raise FailedPrecondition(f"nothing to roll back to: revision {active.number} has no previous revision",
                                 reason="NO_PREVIOUS_REVISION")
    return active.parent
