"""InferenceService over gRPC: convert, call the use case, convert back."""

from __future__ import annotations

import time
import uuid

from google.api import httpbody_pb2
from google.protobuf import json_format

from llmops.v1 import inference_pb2 as pb
from llmops.v1 import inference_pb2_grpc
from shared.environments import ENVIRONMENT_KEY
from shared.errors import STATUS_TABLE, DomainError, InvalidArgument
from shared.identity import current_identity, current_request_id
from shared.interceptors import add_response_metadata
from shared.timeutil import to_timestamp, utcnow

from . import openai_api as oai
from .backends import Chunk
from .experiments import Assignment
from .prompting import Message, SamplingRequest
from .routes import Route
from .service import Answer, Generation, InferenceService
from .tools import ToolCall, Tools, split, tools_from


def _name(request) -> str:  # noqa: ANN001
    return request.name or request.model


def _environment(context) -> str | None:  # noqa: ANN001
    """The environment the gateway named for this call, from its Host (shared/environments.py); None: the default."""
    return next((value for key, value in context.invocation_metadata() or () if key == ENVIRONMENT_KEY), None)


def _optional(request, field: str):  # noqa: ANN001, ANN202
    return getattr(request, field) if request.HasField(field) else None


def _usage(prompt: int, completion: int, cached: int = 0) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                    prompt_tokens_details=pb.PromptTokensDetails(cached_tokens=cached))


def _embedding_input(request: pb.EmbedRequest) -> tuple[list[str], list[list[int]]]:
    """EmbedRequest.input read as OpenAI's input (a Value's numbers are all doubles: 3.0 is token id 3)."""
    value = json_format.MessageToDict(request.input) if request.HasField("input") else None
    return oai.embedding_input(value, integral_floats=True)


def _tool_call(call: ToolCall, index: int | None = None):  # noqa: ANN202 - a ToolCall, or a ToolCallDelta
    function = pb.FunctionCall(name=call.name, arguments=call.arguments)
    if index is None:
        return pb.ToolCall(id=call.id, type="function", function=function)
    return pb.ToolCallDelta(index=index, id=call.id, type="function", function=function)


def _variables(request) -> dict | None:  # noqa: ANN001
    return json_format.MessageToDict(request.variables) if request.HasField("variables") else None


def _sampling(request) -> SamplingRequest:  # noqa: ANN001 - a ChatRequest or a CompleteRequest
    """The typed API's parameters, checked by the same rules as OpenAI's /v1."""
    newer = request.HasField("max_completion_tokens")
    fmt = request.response_format if request.HasField("response_format") else None
    schema = fmt.json_schema.schema if fmt is not None and fmt.json_schema.HasField("schema") else None
    return SamplingRequest(
        max_tokens=request.max_completion_tokens if newer else _optional(request, "max_tokens"),
        max_tokens_param="max_completion_tokens" if newer else "max_tokens",
        temperature=_optional(request, "temperature"), top_p=_optional(request, "top_p"), stop=tuple(request.stop),
        seed=_optional(request, "seed"), presence_penalty=_optional(request, "presence_penalty"),
        frequency_penalty=_optional(request, "frequency_penalty"), response_format=fmt.type if fmt else None,
        json_schema=json_format.MessageToDict(schema) if schema is not None else None)


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

    async def _chat_answer(self, request: pb.ChatRequest, context, *,  # noqa: ANN001
                           buffered: bool = False) -> tuple[Tools | None, Answer]:
        messages = [Message(m.role, m.content, m.name, tool_call_id=m.tool_call_id,
                            tool_calls=tuple(ToolCall(c.id, c.function.name, c.function.arguments)
                                             for c in m.tool_calls)) for m in request.messages]
        tools = tools_from([json_format.MessageToDict(t, preserving_proto_field_name=True) for t in request.tools],
                           json_format.MessageToDict(request.tool_choice) if request.HasField("tool_choice") else None,
                           _optional(request, "parallel_tool_calls"))
        return tools, await self._service.chat_stream(
            actor=current_identity(), name=_name(request), messages=messages, sampling=_sampling(request),
            n=_optional(request, "n"), tools=tools, variables=_variables(request), buffered=buffered,
            environment=_environment(context))

    async def _completion_answer(self, request: pb.CompleteRequest, context, *,  # noqa: ANN001
                                 buffered: bool = False) -> Answer:
        return await self._service.complete_stream(actor=current_identity(), name=_name(request),
                                                   prompt=request.prompt, sampling=_sampling(request),
                                                   n=_optional(request, "n"), variables=_variables(request),
                                                   buffered=buffered, environment=_environment(context))

    async def Chat(self, request: pb.ChatRequest, context) -> pb.ChatResponse:  # noqa: N802
        tools, answer = await self._chat_answer(request, context, buffered=True)
        gens = await self._service.collect(answer, _name(request))
        first: Generation = gens[0]
        add_response_metadata(*_experiment_headers(first.experiment))
        choices = []
        for i, gen in enumerate(gens):
            content, calls, reason = read_answer(tools, gen)
            choices.append(pb.ChatChoice(index=i, finish_reason=reason, message=pb.ChatMessage(
                role="assistant", content=content, tool_calls=[_tool_call(c) for c in calls])))
        return pb.ChatResponse(
            id=first.id, object="chat.completion", created=first.created, model=first.model, choices=choices,
            usage=_usage(first.prompt_tokens, sum(g.completion_tokens for g in gens), first.cached_tokens),
            experiment=_experiment(first.experiment))

    async def ChatStream(self, request: pb.ChatStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created, opened = f"chatcmpl-{current_request_id() or uuid.uuid4()}", int(time.time()), set()
        tools, answer = await self._chat_answer(inner, context)
        readers = [tools.reader() for _ in range(answer.n)] if tools else []
        experiment, headers = _experiment(answer.experiment), _experiment_headers(answer.experiment)
        completion_tokens = finished = 0
        async for index, chunk in answer.choices:
            if headers:  # with the first chunk: an error before it (429, 503) still gets its own status
                await context.send_initial_metadata(headers)
                headers = ()
            content, calls, reason = chunk.text, [], chunk.finish_reason
            if readers:  # content as it decodes, each call whole (tools.py)
                read, end = readers[index].read(chunk.text, reason if chunk.final else None)
                content, found = split(read)
                calls, reason = [_tool_call(c, readers[index].calls.index(c)) for c in found], end or reason
            first = index not in opened
            if not content and not calls and not chunk.final and not first:
                continue
            opened.add(index)
            finished += chunk.final
            completion_tokens += chunk.completion_tokens if chunk.final else 0
            delta = pb.ChatDelta(role="assistant" if first else "", content=content, tool_calls=calls)
            yield pb.ChatStreamResponse(
                id=stream_id, object="chat.completion.chunk", created=created, model=_name(inner),
                choices=[pb.ChatStreamChoice(index=index, delta=delta, finish_reason=reason)],
                # on the last choice's final chunk: the prompt once, every choice's tokens
                usage=(_usage(chunk.prompt_tokens, completion_tokens, chunk.cached_tokens)
                       if finished == answer.n else None),
                experiment=experiment)

    async def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:  # noqa: N802
        gens = await self._service.collect(await self._completion_answer(request, context, buffered=True),
                                           _name(request))
        first = gens[0]
        add_response_metadata(*_experiment_headers(first.experiment))
        return pb.CompleteResponse(
            id=first.id.replace("chatcmpl-", "cmpl-"), object="text_completion", created=first.created,
            model=first.model,
            choices=[pb.CompletionChoice(index=i, text=gen.text, finish_reason=gen.finish_reason)
                     for i, gen in enumerate(gens)],
            usage=_usage(first.prompt_tokens, sum(g.completion_tokens for g in gens), first.cached_tokens),
            experiment=_experiment(first.experiment))

    async def CompleteStream(self, request: pb.CompleteStreamRequest, context):  # noqa: N802
        inner = request.request
        stream_id, created = f"cmpl-{current_request_id() or uuid.uuid4()}", int(time.time())
        answer = await self._completion_answer(inner, context)
        experiment, headers = _experiment(answer.experiment), _experiment_headers(answer.experiment)
        completion_tokens = finished = 0
        async for index, chunk in answer.choices:
            if headers:
                await context.send_initial_metadata(headers)
                headers = ()
            if not chunk.text and not chunk.final:
                continue
            finished += chunk.final
            completion_tokens += chunk.completion_tokens if chunk.final else 0
            yield pb.CompleteStreamResponse(
                id=stream_id, object="text_completion", created=created, model=_name(inner),
                choices=[pb.CompletionChoice(index=index, text=chunk.text, finish_reason=chunk.finish_reason)],
                usage=(_usage(chunk.prompt_tokens, completion_tokens, chunk.cached_tokens)
                       if finished == answer.n else None),
                experiment=experiment)

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:  # noqa: N802
        texts, token_ids = _embedding_input(request)
        result = await self._service.embed(actor=current_identity(), name=_name(request), texts=texts,
                                           token_ids=token_ids, environment=_environment(context))
        return pb.EmbedResponse(
            object="list", model=result.model,
            data=[pb.Embedding(index=i, object="embedding", embedding=vector.tolist())
                  for i, vector in enumerate(result.vectors)],
            usage=_usage(result.prompt_tokens, 0))

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:  # noqa: N802
        report = await self._service.health(name=request.name, environment=_environment(context))
        return pb.HealthResponse(status=report.status, timestamp=to_timestamp(utcnow()),
                                 model=pb.HealthModel(name=report.model_name, version=report.model_version))

    async def ListServedModels(self, request, context) -> pb.ListServedModelsResponse:  # noqa: N802, ANN001
        routes = await self._service.served(environment=_environment(context))
        return pb.ListServedModelsResponse(object="list", data=[_served_model(r) for r in routes])

    async def GetServedModel(self, request: pb.GetServedModelRequest, context) -> pb.ServedModel:  # noqa: N802
        return _served_model(await self._service.served_model(name=request.model, environment=_environment(context)))


# OpenAI's /v1 ------------------------------------------------------------------------------------------------

def _json(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=data)


def _event(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="text/event-stream", data=data)


def _error_event(exc: DomainError) -> bytes:
    """An error after the stream began (its 200 is sent): OpenAI's clients raise it from the event."""
    return oai.sse({"error": {"message": exc.message, "type": STATUS_TABLE[exc.code][1], "param": exc.param,
                              "code": exc.code.name.lower()}})


def _unary(body: oai.SampledBody) -> None:
    if body.stream:  # the gateway sends "stream": true to the :stream binding; this key was escaped
        raise InvalidArgument('stream: write the key as plain "stream" for a streamed answer',
                              reason="INVALID_INPUT", param="stream")


class OpenAIServicer(inference_pb2_grpc.OpenAIServiceServicer):
    """OpenAI's JSON in and out (google.api.HttpBody); the use cases are InferenceService's."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def _chat(self, request, context, *,  # noqa: ANN001
                    buffered: bool) -> tuple[oai.ChatCompletionBody, Tools | None, Answer]:
        body = oai.parse(oai.ChatCompletionBody, request.body.data)
        if buffered:
            _unary(body)
        body.refusals()
        tools = body.chat_tools()
        answer = await self._service.chat_stream(actor=current_identity(), name=body.model,
                                                 messages=body.chat_messages(), sampling=body.sampling(), n=body.n,
                                                 tools=tools, variables=body.variables, buffered=buffered,
                                                 environment=_environment(context))
        return body, tools, answer

    async def _completion(self, request, context, *,  # noqa: ANN001
                          buffered: bool) -> tuple[oai.CompletionBody, Answer]:
        body = oai.parse(oai.CompletionBody, request.body.data)
        if buffered:
            _unary(body)
        body.refusals()
        answer = await self._service.complete_stream(actor=current_identity(), name=body.model,
                                                     prompt=body.prompt_text(), sampling=body.sampling(), n=body.n,
                                                     variables=body.variables, buffered=buffered,
                                                     environment=_environment(context))
        return body, answer

    async def CreateChatCompletion(self, request, context) -> httpbody_pb2.HttpBody:  # noqa: N802, ANN001
        body, tools, answer = await self._chat(request, context, buffered=True)
        gens = await self._service.collect(answer, body.model)
        add_response_metadata(*_experiment_headers(gens[0].experiment))
        choices = []
        for i, gen in enumerate(gens):
            content, calls, reason = read_answer(tools, gen)
            choices.append(oai.chat_message_choice(i, content, reason,
                                                   oai.chat_logprobs(gen.logprobs if body.logprobs else None), calls))
        return _json(oai.completion_object("chat.completion", gens, choices))

    async def CreateCompletion(self, request, context) -> httpbody_pb2.HttpBody:  # noqa: N802, ANN001
        body, answer = await self._completion(request, context, buffered=True)
        gens = await self._service.collect(answer, body.model)
        add_response_metadata(*_experiment_headers(gens[0].experiment))
        echo = body.prompt_text() if body.echo else ""
        choices = [oai.completion_choice(index=i, text=echo + gen.text, finish_reason=gen.finish_reason,
                                         logprobs=oai.completion_logprobs(
                                             gen.logprobs if body.logprobs is not None else None))
                   for i, gen in enumerate(gens)]
        return _json(oai.completion_object("text_completion", gens, choices))

    async def StreamChatCompletion(self, request, context):  # noqa: N802, ANN001, ANN201
        body, tools, answer = await self._chat(request, context, buffered=False)
        writer = oai.ChunkWriter(id=f"chatcmpl-{current_request_id() or uuid.uuid4()}", created=int(time.time()),
                                 model=body.model, object="chat.completion.chunk",
                                 include_usage=body.include_usage())
        readers = [tools.reader() for _ in range(answer.n)] if tools else []

        def first(index: int) -> bytes:
            # With tools the answer may be calls alone: no content yet (an empty one is a text part to some clients).
            delta = {"role": "assistant"} if readers else {"role": "assistant", "content": ""}
            return writer.event([oai.chat_choice(index=index, delta=delta)])

        def delta(index: int, piece: str | ToolCall) -> dict:
            if isinstance(piece, str):
                return {"content": piece}
            return {"tool_calls": [oai.tool_call(piece, readers[index].calls.index(piece))]}

        def pieces(index: int, read: list[str | ToolCall]) -> list[bytes]:
            """Content as it decodes, each call whole (an OpenAI client assembles either)."""
            return [writer.event([oai.chat_choice(index=index, delta=delta(index, piece))]) for piece in read if piece]

        def text(index: int, chunk: Chunk) -> list[bytes]:
            if readers:
                return pieces(index, readers[index].read(chunk.text)[0])
            logprobs = oai.chat_logprobs(chunk.logprobs if body.logprobs else None)
            return [writer.event([oai.chat_choice(index=index, delta={"content": chunk.text}, logprobs=logprobs)])]

        def last(index: int, reason: str) -> list[bytes]:
            left: list[bytes] = []
            if readers:
                read, reason = readers[index].read("", reason)
                left = pieces(index, read)
            return [*left, writer.event([oai.chat_choice(index=index, finish_reason=reason)])]

        async for event in _stream(answer, context, writer, first, text, last):
            yield event

    async def StreamCompletion(self, request, context):  # noqa: N802, ANN001, ANN201
        body, answer = await self._completion(request, context, buffered=False)
        writer = oai.ChunkWriter(id=f"cmpl-{current_request_id() or uuid.uuid4()}", created=int(time.time()),
                                 model=body.model, object="text_completion",
                                 include_usage=body.include_usage())
        echo = body.prompt_text() if body.echo else ""
        offsets = [0] * answer.n  # of each choice's next text, for logprobs.text_offset

        def first(index: int) -> bytes | None:
            return writer.event([oai.completion_choice(index=index, text=echo)]) if echo else None

        def text(index: int, chunk: Chunk) -> list[bytes]:
            logprobs = oai.completion_logprobs(chunk.logprobs if body.logprobs is not None else None, offsets[index])
            offsets[index] += len(chunk.text)
            return [writer.event([oai.completion_choice(index=index, text=chunk.text, logprobs=logprobs)])]

        def last(index: int, reason: str) -> list[bytes]:
            return [writer.event([oai.completion_choice(index=index, finish_reason=reason)])]

        async for event in _stream(answer, context, writer, first, text, last):
            yield event

    async def CreateEmbedding(self, request, context) -> httpbody_pb2.HttpBody:  # noqa: N802, ANN001
        body = oai.parse(oai.EmbeddingBody, request.body.data)
        body.refusals()
        texts, token_ids = body.inputs()
        result = await self._service.embed(actor=current_identity(), name=body.model, texts=texts,
                                           token_ids=token_ids, environment=_environment(context))
        return _json(oai.embeddings(model=result.model, vectors=result.vectors, prompt_tokens=result.prompt_tokens,
                                    encoding_format=body.encoding_format, dimensions=body.dimensions))


def read_answer(tools: Tools | None, generation: Generation) -> tuple[str, list[ToolCall], str]:
    """A whole choice's content, tool calls and finish_reason (with tools, its answer read as tools.py says)."""
    if tools is None:
        return generation.text, [], generation.finish_reason
    read, reason = tools.reader().read(generation.text, generation.finish_reason)
    return *split(read), reason


async def _stream(answer: Answer, context, writer: oai.ChunkWriter, first, text, last):  # noqa: ANN001, ANN202
    """Nothing is sent before the model's first chunk, so that an error until then (429, 503) keeps
    its own HTTP status; after it, an error is an error event, and the stream ends. With n choices,
    their chunks interleave as generated, each with its index; the usage counts the prompt once."""
    headers, started, opened = _experiment_headers(answer.experiment), False, set()
    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        async for index, chunk in answer.choices:
            if not started:
                await context.send_initial_metadata(headers)
                started = True
            if index not in opened:
                opened.add(index)
                if (opening := first(index)) is not None:
                    yield _event(opening)
            if chunk.text:
                for event in text(index, chunk):
                    yield _event(event)
            if chunk.final:
                for event in last(index, chunk.finish_reason):
                    yield _event(event)
                prompt_tokens, completion_tokens = chunk.prompt_tokens, completion_tokens + chunk.completion_tokens
                cached_tokens = chunk.cached_tokens
    except DomainError as exc:
        if not started:
            raise
        yield _event(_error_event(exc))
        return
    if writer.include_usage:
        yield _event(writer.event([], oai.usage(prompt_tokens, completion_tokens, cached_tokens)))
    yield _event(oai.SSE_DONE)
