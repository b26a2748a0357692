"""DeploymentService over gRPC: convert, call the use case, convert back."""

from __future__ import annotations

import functools

from llmops.v1 import audit_pb2
from llmops.v1 import deployment_pb2 as pb
from llmops.v1 import deployment_pb2_grpc
from shared import pagination
from shared.errors import InvalidArgument
from shared.identity import current_identity
from shared.validation import parse_uuid

from . import converters as conv
from .service import DeploymentService


class DeploymentServicer(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, service: DeploymentService) -> None:
        self._service = service

    async def DeployEndpoint(self, request: pb.DeployEndpointRequest, context) -> pb.Endpoint:  # noqa: N802
        endpoint = await self._service.deploy(actor=current_identity(), request=conv.deploy_request(request))
        return conv.endpoint_to_proto(endpoint)

    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context) -> pb.ListEndpointsResponse:  # noqa: N802
        filters = conv.endpoint_filter(request)
        endpoints, token = await pagination.fetch_page(
            functools.partial(self._service.list, filters=filters), conv.endpoint_to_proto,
            requested_size=request.page_size, token=request.page_token,
            query={"environment": request.environment, "modelId": request.model_id, "status": request.status,
                   "name": request.name})
        return pb.ListEndpointsResponse(endpoints=endpoints, next_page_token=token)

    async def GetEndpoint(self, request: pb.GetEndpointRequest, context) -> pb.Endpoint:  # noqa: N802
        endpoint = await self._service.get(endpoint_id=parse_uuid(request.id, "id"))
        return conv.endpoint_to_proto(endpoint)

    async def UpdateEndpoint(self, request: pb.UpdateEndpointRequest, context) -> pb.Endpoint:  # noqa: N802
        endpoint_id = parse_uuid(request.id, "id")
        change = conv.config_change(request)
        if change.empty:
            raise InvalidArgument("nothing to update: give modelId, minReplicas, maxReplicas or autoscalePolicy",
                                  reason="EMPTY_UPDATE")
        endpoint = await self._service.update(actor=current_identity(), endpoint_id=endpoint_id, change=change)
        return conv.endpoint_to_proto(endpoint)

    async def RollbackEndpoint(self, request: pb.RollbackEndpointRequest, context) -> pb.Endpoint:  # noqa: N802
        endpoint = await self._service.rollback(actor=current_identity(), endpoint_id=parse_uuid(request.id, "id"))
        return conv.endpoint_to_proto(endpoint)

    async def DeleteEndpoint(self, request: pb.DeleteEndpointRequest, context) -> pb.Endpoint:  # noqa: N802
        endpoint = await self._service.delete(actor=current_identity(), endpoint_id=parse_uuid(request.id, "id"))
        return conv.endpoint_to_proto(endpoint)

    async def ListEndpointRevisions(self, request: pb.ListEndpointRevisionsRequest, context) -> pb.ListEndpointRevisionsResponse:  # noqa: N802,E501
        endpoint_id = parse_uuid(request.id, "id")
        revisions, token = await pagination.fetch_page(
            functools.partial(self._service.list_revisions, endpoint_id=endpoint_id), conv.revision_to_proto,
            requested_size=request.page_size, token=request.page_token, query={"id": request.id})
        return pb.ListEndpointRevisionsResponse(revisions=revisions, next_page_token=token)

    async def ListAuditRecords(self, request: audit_pb2.ListAuditRecordsRequest, context) -> audit_pb2.ListAuditRecordsResponse:  # noqa: N802,E501
        return await self._service.audit_log(request)

    async def WatchEndpoints(self, request: pb.WatchEndpointsRequest, context):  # noqa: N802
        async for kind, items in self._service.watch(environment=request.environment or None):
            if kind == "delete":
                yield pb.WatchEndpointsResponse(kind=kind, endpoints=[
                    pb.RoutedEndpoint(endpoint=pb.Endpoint(id=endpoint_id, status="deleted")) for endpoint_id in items])
            else:
                yield pb.WatchEndpointsResponse(kind=kind, endpoints=[conv.routed_to_proto(r) for r in items])
