"""InferenceService over gRPC: convert, call the use case, convert back."""

from __future__ import annotations

import time
import uuid

from google.protobuf import struct_pb2

from llmops.v1 import inference_pb2 as pb
from llmops.v1 import inference_pb2_grpc
from shared.errors import InvalidArgument
from shared.identity import current_identity, current_request_id
from shared.timeutil import to_timestamp, utcnow

from .prompting import Message
from .service import Generation, InferenceService


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


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def _chat_chunks(self, request: pb.ChatRequest, *, buffered: bool = False):  # noqa: ANN202
        return self._service.chat_stream(
            actor=current_identity(), name=_name(request),
            messages=[Message(m.role, m.content) for m in request.messages],
            max_tokens=_optional(request, "max_tokens"), temperature=_optional(request, "temperature"),
            top_p=_optional(request, "top_p"), stop=list(request.stop), buffered=buffered)

    def _completion_chunks(self, request: pb.CompleteRequest, *, buffered: bool = False):  # noqa: ANN202
        return self._service.complete_stream(
            actor=current_identity(), name=_name(request), prompt=request.prompt,
            max_tokens=_optional(request, "max_tokens"), temperature=_optional(request, "temperature"),
            top_p=_optional(request, "top_p"), stop=list(request.stop), buffered=buffered)

    async def Chat(self, request: pb.ChatRequest, context) -> pb.ChatResponse:  # noqa: N802
        gen: Generation = await self._service.collect(self._chat_chunks(request, buffered=True), _name(request))
        return pb.ChatResponse(
            id=gen.id, object="chat.completion", created=gen.created, model=gen.model,
            choices=[pb.ChatChoice(index=0, message=pb.ChatMessage(role="assistant", content=gen.text),
                                   finish_reason=gen.finish_reason)],
            usage=_usage(gen.prompt_tokens, gen.completion_tokens))

    async def ChatStream(self, request: pb.ChatStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created, first = f"chatcmpl-{current_request_id() or uuid.uuid4()}", int(time.time()), True
        async for chunk in self._chat_chunks(inner):
            if not chunk.text and not chunk.final and not first:
                continue
            delta = pb.ChatDelta(role="assistant" if first else "", content=chunk.text)
            first = False
            yield pb.ChatStreamResponse(
                id=stream_id, object="chat.completion.chunk", created=created, model=_name(inner),
                choices=[pb.ChatStreamChoice(index=0, delta=delta, finish_reason=chunk.finish_reason)],
                usage=_usage(chunk.prompt_tokens, chunk.completion_tokens) if chunk.final else None)

    async def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:  # noqa: N802
        gen = await self._service.collect(self._completion_chunks(request, buffered=True), _name(request))
        return pb.CompleteResponse(
            id=gen.id.replace("chatcmpl-", "cmpl-"), object="text_completion", created=gen.created, model=gen.model,
            choices=[pb.CompletionChoice(index=0, text=gen.text, finish_reason=gen.finish_reason)],
            usage=_usage(gen.prompt_tokens, gen.completion_tokens))

    async def CompleteStream(self, request: pb.CompleteStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created = f"cmpl-{current_request_id() or uuid.uuid4()}", int(time.time())
        async for chunk in self._completion_chunks(inner):
            if not chunk.text and not chunk.final:
                continue
            yield pb.CompleteStreamResponse(
                id=stream_id, object="text_completion", created=created, model=_name(inner),
                choices=[pb.CompletionChoice(index=0, text=chunk.text, finish_reason=chunk.finish_reason)],
                usage=_usage(chunk.prompt_tokens, chunk.completion_tokens) if chunk.final else None)

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
        return pb.ListServedModelsResponse(object="list", data=[
            pb.ServedModel(id=r.name, object="model", created=0, owned_by=r.model_name) for r in routes])
