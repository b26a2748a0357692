"""Deployment protos <-> domain, with the input checks of each field."""

from __future__ import annotations

from google.protobuf import struct_pb2

from llmops.v1 import deployment_pb2 as pb
from shared import validation as v
from shared.timeutil import to_timestamp

from .domain import (
    DEFAULT_CPU_TARGET, ConfigChange, Endpoint, EndpointFilter, EndpointStatus, Environment, Revision,
)
from .runtimes.base import RuntimeStatus
from .service import DeployRequest, RoutedEndpoint

ENVIRONMENTS = [e.value for e in Environment]
STATUSES = [s.value for s in EndpointStatus if s != EndpointStatus.DELETED]


def deploy_request(request: pb.DeployEndpointRequest) -> DeployRequest:
    model_id = str(v.parse_uuid(request.model_id, "modelId"))
    environment = Environment(v.one_of(request.environment, "environment", ENVIRONMENTS))
    route = v.required(request.route, "route", max_length=128)
    min_replicas = request.min_replicas if request.HasField("min_replicas") else 1
    return DeployRequest(
        model_id=model_id, environment=environment, route=route, min_replicas=min_replicas,
        max_replicas=request.max_replicas if request.HasField("max_replicas") else min_replicas,
        cpu_target=_or(_cpu_target(request.autoscale_policy), DEFAULT_CPU_TARGET),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _cpu_target(policy: pb.AutoscalePolicy) -> int | None:
    return policy.cpu_utilization if policy.HasField("cpu_utilization") else None


def endpoint_filter(request: pb.ListEndpointsRequest) -> EndpointFilter:
    environment = v.optional_one_of(request.environment, "environment", ENVIRONMENTS)
    status = v.optional_one_of(request.status, "status", STATUSES)
    return EndpointFilter(
        environment=Environment(environment) if environment else None,
        model_id=str(v.parse_uuid(request.model_id, "modelId")) if request.model_id else None,
        status=EndpointStatus(status) if status else None,
        name=v.endpoint_name(request.name, "name") if request.name else None,
    )


def config_change(request: pb.UpdateEndpointRequest) -> ConfigChange:
    return ConfigChange(
        model_id=str(v.parse_uuid(request.model_id, "modelId")) if request.HasField("model_id") else None,
        min_replicas=request.min_replicas if request.HasField("min_replicas") else None,
        max_replicas=request.max_replicas if request.HasField("max_replicas") else None,
        cpu_target=_cpu_target(request.autoscale_policy),
    )


def endpoint_to_proto(endpoint: Endpoint) -> pb.Endpoint:
    config = endpoint.config
    return pb.Endpoint(
        id=str(endpoint.id), model_id=config.model.id, environment=endpoint.environment, route=endpoint.route,
        status=endpoint.status, min_replicas=config.min_replicas, max_replicas=config.max_replicas,
        autoscale_policy=pb.AutoscalePolicy(cpu_utilization=config.cpu_target),
        created_at=to_timestamp(endpoint.created_at), updated_at=to_timestamp(endpoint.updated_at),
        revision=endpoint.revision, name=endpoint.name, desired_replicas=endpoint.desired_replicas,
        ready_replicas=endpoint.ready_replicas, status_reason=endpoint.status_reason,
    )


def revision_to_proto(revision: Revision) -> pb.EndpointRevision:
    config = revision.config
    return pb.EndpointRevision(
        revision=revision.number, model_id=config.model.id, min_replicas=config.min_replicas,
        max_replicas=config.max_replicas, autoscale_policy=pb.AutoscalePolicy(cpu_utilization=config.cpu_target),
        created_by=revision.created_by, created_at=to_timestamp(revision.created_at), reason=revision.reason,
    )


def routed_to_proto(routed: RoutedEndpoint) -> pb.RoutedEndpoint:
    runtime: RuntimeStatus = routed.runtime
    model = routed.endpoint.config.model
    metadata = struct_pb2.Struct()
    metadata.update(model.metadata)
    return pb.RoutedEndpoint(
        endpoint=endpoint_to_proto(routed.endpoint), triton_model=runtime.triton_model,
        model=pb.RevisionModel(id=model.id, name=model.name, version=model.version, type=model.type,
                               runtime=model.runtime, metadata=metadata),
        replicas=[pb.Replica(id=r.id, grpc_address=r.grpc_address, ready=r.ready, revision=r.revision)
                  for r in runtime.replicas],
    )
