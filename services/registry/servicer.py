"""RegistryService over gRPC: convert, call the use case in a worker thread, convert back."""

from __future__ import annotations

import asyncio
import functools

from llmops.v1 import audit_pb2
from llmops.v1 import registry_pb2 as pb
from llmops.v1 import registry_pb2_grpc
from shared import pagination
from shared.identity import current_identity
from shared.validation import parse_uuid

from . import converters as conv
from .service import RegistryService


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, service: RegistryService) -> None:
        self._service = service

    async def CreateModel(self, request: pb.CreateModelRequest, context) -> pb.Model:  # noqa: N802
        spec = conv.model_spec(request)
        model = await asyncio.to_thread(self._service.create_model, actor=current_identity(), spec=spec)
        return conv.model_to_proto(model)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:  # noqa: N802
        filters = conv.model_filter(request)
        models, token = await pagination.fetch_page(
            functools.partial(self._service.list_models, filters=filters), conv.model_to_proto,
            requested_size=request.page_size, token=request.page_token,
            query={"type": request.type, "status": request.status, "ownerTeam": request.owner_team})
        return pb.ListModelsResponse(models=models, next_page_token=token)

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.Model:  # noqa: N802
        model_id = parse_uuid(request.id, "id")
        model = await asyncio.to_thread(self._service.get_model, model_id=model_id)
        return conv.model_to_proto(model)

    async def UpdateModelStatus(self, request: pb.UpdateModelStatusRequest, context) -> pb.Model:  # noqa: N802
        model_id = parse_uuid(request.id, "id")
        status = conv.target_status(request)
        model = await asyncio.to_thread(self._service.update_model_status, actor=current_identity(),
                                        model_id=model_id, status=status, notes=request.notes[:4096])
        return conv.model_to_proto(model)

    async def CreatePromptTemplate(self, request: pb.CreatePromptTemplateRequest, context) -> pb.PromptTemplate:  # noqa: N802
        spec = conv.template_spec(request)
        template = await asyncio.to_thread(self._service.create_template, actor=current_identity(), spec=spec)
        return conv.template_to_proto(template)

    async def ListPromptTemplates(self, request: pb.ListPromptTemplatesRequest, context) -> pb.ListPromptTemplatesResponse:  # noqa: N802
        filters = conv.template_filter(request)
        templates, token = await pagination.fetch_page(
            functools.partial(self._service.list_templates, filters=filters), conv.template_to_proto,
            requested_size=request.page_size, token=request.page_token,
            query={"name": request.name, "modelType": request.model_type, "endpoint": request.endpoint})
        return pb.ListPromptTemplatesResponse(templates=templates,
                                              next_page_token=token)

    async def GetPromptTemplate(self, request: pb.GetPromptTemplateRequest, context) -> pb.PromptTemplate:  # noqa: N802
        template_id = parse_uuid(request.id, "id")
        template = await asyncio.to_thread(self._service.get_template, template_id=template_id)
        return conv.template_to_proto(template)

    async def ListAuditRecords(self, request: audit_pb2.ListAuditRecordsRequest, context) -> audit_pb2.ListAuditRecordsResponse:  # noqa: N802,E501
        return await self._service.audit_log(request)
