"""ExperimentService over gRPC: convert, call the use case, convert back."""

from __future__ import annotations

import asyncio
import functools

from llmops.v1 import audit_pb2
from llmops.v1 import experiment_pb2 as pb
from llmops.v1 import experiment_pb2_grpc
from shared import pagination
from shared import validation as v
from shared.identity import current_identity
from shared.validation import parse_uuid

from . import converters as conv
from .service import ExperimentService


class ExperimentServicer(experiment_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, service: ExperimentService) -> None:
        self._service = service

    async def CreateExperiment(self, request: pb.CreateExperimentRequest, context) -> pb.Experiment:  # noqa: N802
        experiment = await self._service.create(actor=current_identity(), spec=conv.experiment_spec(request))
        return conv.experiment_to_proto(experiment)

    async def ListExperiments(self, request: pb.ListExperimentsRequest, context) -> pb.ListExperimentsResponse:  # noqa: N802
        filters = conv.experiment_filter(request)
        experiments, token = await pagination.fetch_page(
            functools.partial(self._service.list, filters=filters), conv.experiment_to_proto,
            requested_size=request.page_size, token=request.page_token,
            query={"status": request.status, "endpoint": request.endpoint})
        return pb.ListExperimentsResponse(experiments=experiments, next_page_token=token)

    async def GetExperiment(self, request: pb.GetExperimentRequest, context) -> pb.Experiment:  # noqa: N802
        experiment, analysis = await self._service.get(experiment_id=parse_uuid(request.id, "id"))
        return conv.experiment_to_proto(experiment, analysis)

    async def ConcludeExperiment(self, request: pb.ConcludeExperimentRequest, context) -> pb.Experiment:  # noqa: N802
        experiment_id = parse_uuid(request.id, "id")
        winner = str(parse_uuid(request.winner_template_id, "winnerTemplateId"))
        experiment, analysis = await self._service.conclude(actor=current_identity(), experiment_id=experiment_id,
                                                            winner_template_id=winner, notes=request.notes)
        return conv.experiment_to_proto(experiment, analysis)

    async def RecordFeedback(self, request: pb.RecordFeedbackRequest, context) -> pb.Feedback:  # noqa: N802
        receipt = await self._service.feedback(
            actor=current_identity(), endpoint=v.endpoint_name(request.name, "name"),
            request_id=v.required(request.request_id, "requestId", max_length=128), score=conv.feedback_score(request))
        return pb.Feedback(request_id=receipt.request_id, experiment_id=receipt.experiment_id,
                           variant=receipt.variant, template_id=receipt.template_id, score=receipt.score)

    async def ListAuditRecords(self, request: audit_pb2.ListAuditRecordsRequest, context) -> audit_pb2.ListAuditRecordsResponse:  # noqa: N802,E501
        return await self._service.audit_log(request)

    async def RecordOutcomes(self, request: pb.RecordOutcomesRequest, context) -> pb.RecordOutcomesResponse:  # noqa: N802
        records = [r for r in map(conv.outcome_record, request.outcomes) if r is not None]
        accepted = await asyncio.to_thread(self._service.ingest, records)
        return pb.RecordOutcomesResponse(accepted=accepted)

    async def WatchExperiments(self, request: pb.WatchExperimentsRequest, context):  # noqa: N802
        async for experiments in self._service.watch():
            yield pb.WatchExperimentsResponse(kind="snapshot", experiments=[
                pb.ActiveExperiment(experiment=conv.experiment_to_proto(e), template_a_content=e.template_a_content,
                                    template_b_content=e.template_b_content) for e in experiments])
