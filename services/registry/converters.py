"""Registry protos <-> domain, with the input checks of each field."""

from __future__ import annotations

import json

from google.protobuf import json_format, struct_pb2

from llmops.v1 import registry_pb2 as pb
from shared import validation as v
from shared.errors import InvalidArgument
from shared.timeutil import to_timestamp

from .domain import (
    MAX_METADATA_BYTES, Model, ModelFilter, ModelSpec, ModelStatus, ModelType, PromptTemplate, Runtime,
    TemplateFilter, TemplateSpec, check_artifact_uri, check_name,
)

MODEL_TYPES = [t.value for t in ModelType]
RUNTIMES = [r.value for r in Runtime]
STATUSES = [s.value for s in ModelStatus]


def _metadata(value: struct_pb2.Struct) -> dict:
    data = json_format.MessageToDict(value)
    if len(json.dumps(data)) > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is larger than {MAX_METADATA_BYTES} bytes", reason="METADATA_TOO_LARGE")
    return data


def model_spec(request: pb.CreateModelRequest) -> ModelSpec:
    return ModelSpec(
        name=check_name(v.required(request.name, "name"), "name"),
        version=v.required(request.version, "version", max_length=64),
        type=ModelType(v.one_of(request.type, "type", MODEL_TYPES)),
        runtime=Runtime(v.one_of(request.runtime, "runtime", RUNTIMES)),
        artifact_uri=check_artifact_uri(v.required(request.artifact_uri, "artifactUri", max_length=1024)),
        owner_team=v.required(request.owner_team, "ownerTeam", max_length=128),
        metadata=_metadata(request.metadata),
        status=ModelStatus(v.one_of(request.status, "status", STATUSES, default=ModelStatus.DRAFT)),
    )


def model_filter(request: pb.ListModelsRequest) -> ModelFilter:
    type_ = v.optional_one_of(request.type, "type", MODEL_TYPES)
    status = v.optional_one_of(request.status, "status", STATUSES)
    return ModelFilter(
        type=ModelType(type_) if type_ else None,
        status=ModelStatus(status) if status else None,
        owner_team=request.owner_team or None,
    )


def target_status(request: pb.UpdateModelStatusRequest) -> ModelStatus:
    return ModelStatus(v.one_of(request.status, "status", STATUSES))


def model_to_proto(model: Model) -> pb.Model:
    metadata = struct_pb2.Struct()
    metadata.update(model.metadata)
    return pb.Model(
        id=str(model.id), name=model.name, version=model.version, type=model.type, runtime=model.runtime,
        artifact_uri=model.artifact_uri, owner_team=model.owner_team, status=model.status, metadata=metadata,
        created_by=model.created_by, reviewed_by=model.reviewed_by, review_notes=model.review_notes,
        created_at=to_timestamp(model.created_at), updated_at=to_timestamp(model.updated_at),
    )


def template_spec(request: pb.CreatePromptTemplateRequest) -> TemplateSpec:
    if not request.content.strip():
        raise InvalidArgument("content is required", reason="MISSING_FIELD")
    return TemplateSpec(
        name=check_name(v.required(request.name, "name"), "name"),
        content=request.content,
        model_type=ModelType(v.one_of(request.model_type, "modelType", MODEL_TYPES)),
        endpoint=v.endpoint_name(request.endpoint) if request.endpoint else "",
        description=request.description[:4096],
    )


def template_filter(request: pb.ListPromptTemplatesRequest) -> TemplateFilter:
    model_type = v.optional_one_of(request.model_type, "modelType", MODEL_TYPES)
    return TemplateFilter(
        name=request.name or None,
        model_type=ModelType(model_type) if model_type else None,
        endpoint=request.endpoint or None,
    )


def template_to_proto(template: PromptTemplate) -> pb.PromptTemplate:
    return pb.PromptTemplate(
        id=str(template.id), name=template.name, version=template.version, content=template.content,
        model_type=template.model_type, endpoint=template.endpoint, description=template.description,
        created_by=template.created_by, created_at=to_timestamp(template.created_at),
    )
