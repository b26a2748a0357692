"""InferenceService over gRPC: convert, call the use case, convert back."""

from __future__ import annotations

import time
import uuid

from google.protobuf import json_format, struct_pb2

from llmops.v1 import inference_pb2 as pb
from llmops.v1 import inference_pb2_grpc
from shared.errors import InvalidArgument
from shared.identity import current_identity, current_request_id
from shared.interceptors import add_response_metadata
from shared.timeutil import to_timestamp, utcnow

from .experiments import Assignment
from .prompting import Message
from .routes import Route
from .service import Answer, Generation, InferenceService


def _name(request) -> str:  # noqa: ANN001
    return request.name or request.model


def _optional(request, field: str):  # noqa: ANN001, ANN202
    return getattr(request, field) if request.HasField(field) else None


def _usage(prompt: int, completion: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _texts(value: struct_pb2.Value) -> list[str]:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return [value.string_value]
    if kind == "list_value" and all(v.WhichOneof("kind") == "string_value" for v in value.list_value.values):
        return [v.string_value for v in value.list_value.values]
    raise InvalidArgument("input must be a string or a list of strings", reason="INVALID_INPUT")


def _variables(request) -> dict | None:  # noqa: ANN001
    return json_format.MessageToDict(request.variables) if request.HasField("variables") else None


# On /v1 the body is OpenAI's, so the experiment that chose the prompt comes as response headers.
EXPERIMENT_HEADERS = ("x-llmops-experiment-id", "x-llmops-experiment-variant", "x-llmops-experiment-template-id")


def _experiment_headers(assignment: Assignment | None) -> tuple[tuple[str, str], ...]:
    if assignment is None:
        return ()
    return tuple(zip(EXPERIMENT_HEADERS, (assignment.experiment_id, assignment.variant, assignment.template_id)))


def _experiment(assignment: Assignment | None) -> pb.ExperimentAssignment | None:
    if assignment is None:
        return None
    return pb.ExperimentAssignment(id=assignment.experiment_id, variant=assignment.variant,
                                   template_id=assignment.template_id)


def _served_model(route: Route) -> pb.ServedModel:
    return pb.ServedModel(id=route.name, object="model", created=route.created, owned_by=route.model_name)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def _chat_answer(self, request: pb.ChatRequest, *, buffered: bool = False) -> Answer:
        return await self._service.chat_stream(
            actor=current_identity(), name=_name(request),
            messages=[Message(m.role, m.content) for m in request.messages],
            max_tokens=_optional(request, "max_tokens"), temperature=_optional(request, "temperature"),
            top_p=_optional(request, "top_p"), stop=list(request.stop), variables=_variables(request),
            buffered=buffered)

    async def _completion_answer(self, request: pb.CompleteRequest, *, buffered: bool = False) -> Answer:
        return await self._service.complete_stream(
            actor=current_identity(), name=_name(request), prompt=request.prompt,
            max_tokens=_optional(request, "max_tokens"), temperature=_optional(request, "temperature"),
            top_p=_optional(request, "top_p"), stop=list(request.stop), variables=_variables(request),
            buffered=buffered)

    async def Chat(self, request: pb.ChatRequest, context) -> pb.ChatResponse:  # noqa: N802
        gen: Generation = await self._service.collect(await self._chat_answer(request, buffered=True), _name(request))
        add_response_metadata(*_experiment_headers(gen.experiment))
        return pb.ChatResponse(
            id=gen.id, object="chat.completion", created=gen.created, model=gen.model,
            choices=[pb.ChatChoice(index=0, message=pb.ChatMessage(role="assistant", content=gen.text),
                                   finish_reason=gen.finish_reason)],
            usage=_usage(gen.prompt_tokens, gen.completion_tokens), experiment=_experiment(gen.experiment))

    async def ChatStream(self, request: pb.ChatStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created, first = f"chatcmpl-{current_request_id() or uuid.uuid4()}", int(time.time()), True
        answer = await self._chat_answer(inner)
        experiment, headers = _experiment(answer.experiment), _experiment_headers(answer.experiment)
        async for chunk in answer.chunks:
            if headers:  # with the first chunk: an error before it (429, 503) still gets its own status
                await context.send_initial_metadata(headers)
                headers = ()
            if not chunk.text and not chunk.final and not first:
                continue
            delta = pb.ChatDelta(role="assistant" if first else "", content=chunk.text)
            first = False
            yield pb.ChatStreamResponse(
                id=stream_id, object="chat.completion.chunk", created=created, model=_name(inner),
                choices=[pb.ChatStreamChoice(index=0, delta=delta, finish_reason=chunk.finish_reason)],
                usage=_usage(chunk.prompt_tokens, chunk.completion_tokens) if chunk.final else None,
                experiment=experiment)

    async def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:  # noqa: N802
        gen = await self._service.collect(await self._completion_answer(request, buffered=True), _name(request))
        add_response_metadata(*_experiment_headers(gen.experiment))
        return pb.CompleteResponse(
            id=gen.id.replace("chatcmpl-", "cmpl-"), object="text_completion", created=gen.created, model=gen.model,
            choices=[pb.CompletionChoice(index=0, text=gen.text, finish_reason=gen.finish_reason)],
            usage=_usage(gen.prompt_tokens, gen.completion_tokens), experiment=_experiment(gen.experiment))

    async def CompleteStream(self, request: pb.CompleteStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created = f"cmpl-{current_request_id() or uuid.uuid4()}", int(time.time())
        answer = await self._completion_answer(inner)
        experiment, headers = _experiment(answer.experiment), _experiment_headers(answer.experiment)
        async for chunk in answer.chunks:
            if headers:
                await context.send_initial_metadata(headers)
                headers = ()
            if not chunk.text and not chunk.final:
                continue
            yield pb.CompleteStreamResponse(
                id=stream_id, object="text_completion", created=created, model=_name(inner),
                choices=[pb.CompletionChoice(index=0, text=chunk.text, finish_reason=chunk.finish_reason)],
                usage=_usage(chunk.prompt_tokens, chunk.completion_tokens) if chunk.final else None,
                experiment=experiment)

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:  # noqa: N802
        texts = _texts(request.input) if request.HasField("input") else []
        result = await self._service.embed(actor=current_identity(), name=_name(request), texts=texts)
        return pb.EmbedResponse(
            object="list", model=result.model,
            data=[pb.Embedding(index=i, object="embedding", embedding=vector.tolist())
                  for i, vector in enumerate(result.vectors)],
            usage=_usage(result.prompt_tokens, 0))

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:  # noqa: N802
        report = await self._service.health(name=request.name)
        return pb.HealthResponse(status=report.status, timestamp=to_timestamp(utcnow()),
                                 model=pb.HealthModel(name=report.model_name, version=report.model_version))

    async def ListServedModels(self, request, context) -> pb.ListServedModelsResponse:  # noqa: N802, ANN001
        routes = await self._service.served()
        return pb.ListServedModelsResponse(object="list", data=[_served_model(r) for r in routes])

    async def GetServedModel(self, request: pb.GetServedModelRequest, context) -> pb.ServedModel:  # noqa: N802
        return _served_model(await self._service.served_model(name=request.model))
