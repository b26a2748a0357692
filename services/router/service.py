"""Inference use cases: find the route in memory, pick a replica, call
Triton, count tokens, time it, hand the outcome off."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from shared.errors import DeadlineExceeded, DomainError, InvalidArgument, NotFound, Unavailable
from shared.identity import Identity, current_request_id
from shared.model_limits import CHARS_PER_TOKEN_BOUND, EmbeddingLimits, context_length

from .backends import Chunk, ReplicaFailure, ReplicaPool, Sampling
from .experiments import Assignment, ExperimentTable
from .limits import RateLimiter
from .outcomes import Outcome, OutcomeSink, observes_variant
from .prompting import (Message, SamplingRequest, check_messages, check_sampling, message_variables, model_stop_words,
                        render_chat, render_prompt_template)
from .routes import Route, RouteTable
from .tools import Tools, model_messages

log = structlog.get_logger()

REQUESTS = Counter("llmops_inference_requests_total", "Inference requests by endpoint, kind and outcome.",
                   ["endpoint", "kind", "code"])
LATENCY = Histogram("llmops_inference_latency_seconds", "Whole-request latency by endpoint and kind.",
                    ["endpoint", "kind"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
TTFT = Histogram("llmops_inference_time_to_first_token_seconds", "Time to the first generated token.",
                 ["endpoint"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8))
TOKENS_PER_S = Histogram("llmops_inference_output_tokens_per_second", "Generation speed after the first token.",
                         ["endpoint"], buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800))
IN_FLIGHT = Gauge("llmops_inference_in_flight_requests", "Requests being served (queued or generating), by endpoint.",
                  ["endpoint"])
QUEUED = Gauge("llmops_inference_queued_requests", "Requests on a replica that have no first token yet (waiting "
               "behind others, or reading the prompt), by endpoint.", ["endpoint"])
SHED = Counter("llmops_inference_shed_total", "Requests answered 503 at once because every ready replica was full "
               "(router_queue_per_replica or the admission budget), by endpoint.", ["endpoint"])
DEFAULT_MAX_TOKENS = 256
MAX_CHOICES = 8  # n: each choice is a generation of its own, and a replica runs 8 at most
T = TypeVar("T")


@dataclass(frozen=True)
class Generation:
    id: str
    created: int
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    experiment: Assignment | None = None
    logprobs: tuple[dict, ...] = ()
    cached_tokens: int = 0  # of prompt_tokens, those the replica reused from its cache


@dataclass(frozen=True)
class Answer:
    """A request about to run: its choices' chunks as they are generated, each with its choice's
    index (OpenAI's n; ChoiceTurns), and the experiment that chose its prompt, if any. The request
    counts once against the caller's rate limit and records one outcome, whatever its n."""

    choices: AsyncIterator[tuple[int, Chunk]]
    experiment: Assignment | None
    n: int = 1


def experiment_fields(assignment: Assignment) -> dict[str, str]:
    return {"experiment_id": assignment.experiment_id, "variant": assignment.variant,
            "template_id": assignment.template_id}


@dataclass(frozen=True)
class Embeddings:
    model: str
    vectors: np.ndarray
    prompt_tokens: int


@dataclass
class _Call:
    """What one request produced, for its metrics and outcome record: the prompt once, the
    completion tokens of each of its choices."""

    prompt_tokens: int = 0
    choice_tokens: dict[int, int] = dataclasses.field(default_factory=dict)
    first_token_at: float | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(self.choice_tokens.values())


@dataclass(frozen=True)
class HealthReport:
    status: str
    model_name: str
    model_version: str


class InferenceService:
    def __init__(self, *, table: RouteTable, pool: ReplicaPool, limiter: RateLimiter, outcomes: OutcomeSink,
                 timeout_s: float, max_output_tokens: int, queue_limit: int = 8, queue_budget: float = 0.0,
                 experiments: ExperimentTable | None = None) -> None:
        self._table = table
        self._experiments = experiments or ExperimentTable()
        self._pool = pool
        self._limiter = limiter
        self._outcomes = outcomes
        self._timeout = timeout_s
        self._max_output = max_output_tokens
        self._queue_limit = queue_limit  # requests that may wait on a replica beyond its slots; no more
        self._queue_budget = queue_budget  # the standing queue admitted, in service times (admission.py)

    # generation ----------------------------------------------------------------------------------------------

    async def chat_stream(self, *, actor: Identity, name: str, messages: list[Message], sampling: SamplingRequest,
                          n: int | None = None, tools: Tools | None = None, variables: dict[str, Any] | None = None,
                          buffered: bool = False, environment: str | None = None) -> Answer:
        """Check and render now (errors before any chunk); the answer's chunks come as generated, or,
        buffered (a unary call), each choice's all at once at its end, so that a replica that fails
        mid-generation is retried on another, the client having seen nothing. With tools, the model
        answers in the tools' JSON (tools.py), which the caller reads with tools.reader()."""
        route = await self._route(name, environment, kinds=("chat", "completion"))
        if tools is not None:
            sampling = tool_sampling(sampling, tools)
        messages = check_messages(model_messages(messages, tools))
        assignment = await self._assign(route, actor, "chat")
        template_variables = None
        if assignment is not None:  # the experiment's template is the system prompt
            template_variables = {
                **(variables or {}), "system": "\n".join(m.content for m in messages if m.role == "system"),
                "user_message": next((m.content for m in reversed(messages) if m.role == "user"), ""),
                "messages": [message_variables(m) for m in messages],
                "user": actor.user_id, "endpoint": route.name}
        prompt = await render_chat(route.metadata, messages, system_template=assignment and assignment.template,
                                   template_variables=template_variables,
                                   system_suffix=tools.instructions if tools else "")
        if not prompt.strip():  # nothing for the model to continue: the template's doing, not the replica's
            raise InvalidArgument(f"the chat template of endpoint {name} rendered an empty prompt for these "
                                  "messages", reason="EMPTY_PROMPT")
        check_prompt_length(route, prompt, "messages")
        return self._answer(actor, route, prompt, self._samplings(route, sampling, n), kind="chat",
                            buffered=buffered, assignment=assignment)

    async def complete_stream(self, *, actor: Identity, name: str, prompt: str, sampling: SamplingRequest,
                              n: int | None = None, variables: dict[str, Any] | None = None, buffered: bool = False,
                              environment: str | None = None) -> Answer:
        route = await self._route(name, environment, kinds=("chat", "completion"))
        if not prompt.strip():
            raise InvalidArgument("prompt must not be empty", reason="EMPTY_INPUT", param="prompt")
        assignment = await self._assign(route, actor, "completion")
        if assignment is not None:  # the experiment's template wraps the prompt
            prompt = await render_prompt_template(assignment.template, {
                **(variables or {}), "prompt": prompt, "user": actor.user_id, "endpoint": route.name})
            if not prompt.strip():
                raise InvalidArgument(f"the experiment's prompt template rendered an empty prompt on endpoint "
                                      f"{name}", reason="EMPTY_PROMPT")
        check_prompt_length(route, prompt, "prompt")
        return self._answer(actor, route, prompt, self._samplings(route, sampling, n), kind="completion",
                            buffered=buffered, assignment=assignment)

    async def _assign(self, route: Route, actor: Identity, kind: str) -> Assignment | None:
        """The experiment that chooses this request's prompt, if any. Experiments name an endpoint of
        the default environment (the experiment service looks endpoints up there): an endpoint of that
        name in another environment is not part of one."""
        if route.environment != self._table.default_environment:
            return None
        await self._experiments.wait_synced()
        return self._experiments.assign(route.endpoint_id, actor.user_id, kind)

    async def collect(self, answer: Answer, name: str) -> list[Generation]:
        """Each choice's whole generation, in index order."""
        texts: list[list[str]] = [[] for _ in range(answer.n)]
        logprobs: list[list[dict]] = [[] for _ in range(answer.n)]
        last = [Chunk("")] * answer.n
        async for index, chunk in answer.choices:
            texts[index].append(chunk.text)
            logprobs[index] += chunk.logprobs
            last[index] = chunk
        request_id, created = f"chatcmpl-{current_request_id() or uuid.uuid4()}", int(time.time())
        return [Generation(id=request_id, created=created, model=name, text="".join(text),
                           finish_reason=end.finish_reason, prompt_tokens=end.prompt_tokens,
                           completion_tokens=end.completion_tokens, experiment=answer.experiment,
                           logprobs=tuple(entries), cached_tokens=end.cached_tokens)
                for text, entries, end in zip(texts, logprobs, last, strict=True)]

    def _samplings(self, route: Route, request: SamplingRequest, n: int | None) -> list[Sampling]:
        """One sampling per choice (choice_samplings), each checked against the route's limits."""
        limit = min(self._max_output, context_length(route.metadata))
        checked = [check_sampling(choice, default_max_tokens=min(DEFAULT_MAX_TOKENS, limit), limit=limit)
                   for choice in choice_samplings(request, n)]
        return [dataclasses.replace(s, stop=s.stop + model_stop_words(route.metadata)) for s in checked]

    def _answer(self, actor: Identity, route: Route, prompt: str, samplings: list[Sampling], *, kind: str,
                buffered: bool, assignment: Assignment | None) -> Answer:
        return Answer(self._run(actor, route, prompt, samplings, kind=kind, buffered=buffered,
                                assignment=assignment), assignment, len(samplings))

    async def _run(self, actor: Identity, route: Route, prompt: str, samplings: list[Sampling], *, kind: str,
                   buffered: bool, assignment: Assignment | None) -> AsyncIterator[tuple[int, Chunk]]:
        """The request: once against the rate limit and one outcome record, its choices taking turns."""
        await self._limiter.check(actor.user_id)
        request_id = current_request_id() or str(uuid.uuid4())
        async with self._accounted(actor, route, kind, assignment) as call:
            generations = [self._generate(route, prompt, sampling, call, index, request_id, buffered=buffered)
                           for index, sampling in enumerate(samplings)]
            async with contextlib.aclosing(merge(generations, choice_share(route))) as choices:
                async for item in choices:
                    yield item  # outside any timeout: the deadline never cancels the caller's code

    async def _generate(self, route: Route, prompt: str, sampling: Sampling, call: _Call, index: int,
                        request_id: str, *, buffered: bool) -> AsyncIterator[Chunk]:
        """One choice's chunks, from the first replica that answers."""
        deadline, sent, failure = self._deadline(), False, None
        queued = QUEUED.labels(route.name)
        for address in self._replicas(route):
            chunks = self._pool.generate(address, route.triton_model, prompt, sampling, request_id)
            held: list[Chunk] = []
            queued.inc()
            waiting, first_token_at = True, call.first_token_at
            try:
                while (chunk := await self._upstream(anext(chunks, None), deadline)) is not None:
                    if waiting:  # the replica answers: no longer in its queue
                        queued.dec()
                        waiting = False
                    if call.first_token_at is None and (chunk.text or chunk.final):
                        call.first_token_at = time.perf_counter()
                    call.prompt_tokens, call.choice_tokens[index] = chunk.prompt_tokens, chunk.completion_tokens
                    if buffered:
                        held.append(chunk)
                        continue
                    sent = True
                    yield chunk  # outside any timeout: the deadline never cancels the caller's code
                for chunk in held:
                    yield chunk
                return
            except ReplicaFailure as exc:
                if sent:  # the client has tokens of this answer: another replica cannot continue it
                    raise Unavailable(f"the replica failed mid-request: {exc}", reason="REPLICA_FAILED") from exc
                failure, call.first_token_at, call.choice_tokens[index] = exc, first_token_at, 0
                log.warning("replica failed before the first token; trying another", replica=address,
                            error=str(exc))
            finally:
                if waiting:
                    queued.dec()
                await chunks.aclose()
        raise _no_replica_left(route, failure)

    # embeddings and health -----------------------------------------------------------------------------------

    async def embed(self, *, actor: Identity, name: str, texts: list[str] | None = None,
                    token_ids: list[list[int]] | None = None, environment: str | None = None) -> Embeddings:
        """The vectors of `texts`, or of `token_ids`: arrays of the ids of the endpoint's own tokenizer, each
        one input, which the model embeds as the text they spell (deploy/triton/embedding/model.py)."""
        route = await self._route(name, environment, kinds=("embedding",))
        inputs = token_ids or texts or []
        if not inputs or any(not (i.strip() if isinstance(i, str) else i) for i in inputs):
            raise InvalidArgument("input must be a non-empty string, a list of non-empty strings or non-empty "
                                  "token-id arrays", reason="EMPTY_INPUT", param="input")
        check_embedding_input(route.name, inputs, EmbeddingLimits.from_metadata(route.metadata))
        await self._limiter.check(actor.user_id)
        async with self._accounted(actor, route, "embedding") as call:
            deadline, failure = self._deadline(), None
            for address in self._replicas(route):
                try:
                    vectors, call.prompt_tokens = await self._upstream(
                        self._pool.embed(address, route.triton_model, inputs, current_request_id()), deadline)
                    break
                except ReplicaFailure as exc:
                    failure = exc
                    log.warning("replica failed; trying another", replica=address, error=str(exc))
            else:
                raise _no_replica_left(route, failure)
        return Embeddings(model=route.name, vectors=vectors, prompt_tokens=call.prompt_tokens)

    # one call to the replicas: retries, timeout, metrics, outcome -------------------------------------------

    def _replicas(self, route: Route) -> Iterator[str]:
        """Ready replicas to try, least outstanding first, those cooling down after a failure last;
        each once. The newest replica set is read on each step, so a retry sees replicas that
        changed during the request."""
        tried: set[str] = set()
        budget = route.metadata.get("queue_budget")  # the model's own, if it has one (checked at registration)
        if not isinstance(budget, int | float) or isinstance(budget, bool):  # none, or registered before the check
            budget = self._queue_budget
        while True:
            current = self._table.get(route.name, route.environment) or route
            address = self._pool.pick(current.replicas, tried, slots=current.slots, queue=self._queue_limit,
                                      queue_budget=budget)
            if address is None:
                if any(a not in tried for a in current.replicas):  # all the others are full: no waiting in line
                    SHED.labels(route.name).inc()
                    raise Unavailable(f"endpoint {route.name} is busy: each ready replica has all {current.slots} "
                                      f"slots running and {self._queue_limit} more requests waiting, or a queue that "
                                      "has stood beyond its admission budget; retry shortly",
                                      reason="ENDPOINT_BUSY", retry_after_s=1)
                return
            tried.add(address)
            yield address

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout

    async def _upstream(self, waiting: Awaitable[T], deadline: float) -> T:
        """One wait on the replica, bounded by the request's deadline. Never wraps a yield (PEP 789):
        a timeout spanning one would cancel the consumer's code instead of the wait."""
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await waiting
        except TimeoutError as exc:
            if not timeout.expired():
                raise  # raised by the call itself, not our deadline
            raise DeadlineExceeded(f"the model did not answer within {self._timeout:g}s",
                                   reason="UPSTREAM_TIMEOUT") from exc

    @contextlib.asynccontextmanager
    async def _accounted(self, actor: Identity, route: Route, kind: str,
                         assignment: Assignment | None = None) -> AsyncIterator[_Call]:
        """Metrics and the outcome record of one request, whatever way it ends; the outcome counts
        for the experiment when a running one chose the prompt and the caller did not cause its
        failure (outcomes.observes_variant)."""
        call, started, code, at = _Call(), time.perf_counter(), "OK", time.time()
        in_flight = IN_FLIGHT.labels(route.name)
        in_flight.inc()
        try:
            yield call
        except DomainError as exc:
            code = exc.code.name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"  # the client went away; closing the stream cancelled it on the replica
            raise
        except Exception:
            code = "INTERNAL"  # a bug, not the client's doing: the interceptor answers INTERNAL too
            raise
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - started
            REQUESTS.labels(route.name, kind, code).inc()
            LATENCY.labels(route.name, kind).observe(elapsed)
            if call.first_token_at is not None:
                TTFT.labels(route.name).observe(call.first_token_at - started)
                decode_s = time.perf_counter() - call.first_token_at
                if call.completion_tokens > 1 and decode_s > 0:
                    TOKENS_PER_S.labels(route.name).observe((call.completion_tokens - 1) / decode_s)
            self._outcomes.record(Outcome(
                request_id=current_request_id(), endpoint=route.name, route=f"/llm-ops/v1/serve/{route.name}",
                user=actor.user_id, kind=kind, latency_ms=round(elapsed * 1000, 2),
                prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                error="" if code == "OK" else code, at=at,
                **(experiment_fields(assignment) if assignment is not None and assignment.running
                   and observes_variant(code) else {})))

    async def health(self, *, name: str, environment: str | None = None) -> HealthReport:
        route = await self._route(name, environment, kinds=None)
        if route.replicas and route.status == "healthy":
            status = "healthy"
        elif route.replicas:
            status = "degraded"
        else:
            status = "unhealthy"
        return HealthReport(status=status, model_name=route.name, model_version=route.model_version)

    async def served(self, *, environment: str | None = None) -> list[Route]:
        """The endpoints of one environment (the default when none is named)."""
        environment = self._table.environment_of(environment)
        await self._synced()
        return self._table.of_environment(environment)

    async def served_model(self, *, name: str, environment: str | None = None) -> Route:
        return await self._route(name, environment, kinds=None)

    # routes --------------------------------------------------------------------------------------------------

    async def _synced(self) -> None:
        # Right after start the first snapshot may still be on its way.
        if not self._table.synced.is_set():
            try:
                async with asyncio.timeout(5):
                    await self._table.synced.wait()
            except TimeoutError as exc:
                raise Unavailable("the route table is not loaded yet: the deployment service is unreachable",
                                  reason="ROUTES_NOT_LOADED") from exc

    async def _route(self, name: str, environment: str | None, *, kinds: tuple[str, ...] | None) -> Route:
        """The route of endpoint name in environment (the gateway's, from the request's Host; else the default)."""
        environment = self._table.environment_of(environment)
        if not name:
            raise InvalidArgument("the endpoint name is required (the path's {name} or the body's model)",
                                  reason="MISSING_ENDPOINT")
        await self._synced()
        route = self._table.get(name, environment)
        if route is None:
            raise NotFound(f"no serving endpoint named {name!r} in {environment}", reason="ENDPOINT_NOT_FOUND")
        if kinds is not None and route.model_type not in kinds:
            raise InvalidArgument(f"endpoint {name} serves a {route.model_type} model; use the "
                                  f"{'embeddings' if route.model_type == 'embedding' else 'chat or completion'} API",
                                  reason="WRONG_MODEL_TYPE")
        return route


def tool_sampling(request: SamplingRequest, tools: Tools) -> SamplingRequest:
    """The sampling of a request with tools: its answer is the tools' JSON, under their grammar."""
    if request.response_format not in (None, "", "text"):
        raise InvalidArgument("response_format: the answer of a request with tools is the tools' JSON; send "
                              'tool_choice "none" for a response_format answer', reason="UNSUPPORTED_PARAMETER",
                              param="response_format")
    if request.logprobs:
        raise InvalidArgument("logprobs: a request with tools gives no log-probabilities (its tokens are the "
                              "tools' JSON, not the content's)", reason="UNSUPPORTED_PARAMETER", param="logprobs")
    return dataclasses.replace(request, tools_guide=tools.guide)


def choice_samplings(sampling: SamplingRequest, n: int | None) -> list[SamplingRequest]:
    """One sampling per choice (OpenAI's n). With a seed, choice i samples with seed + i: the
    choices differ from each other, and the same request gives the same choices again."""
    n = 1 if n is None else n
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidArgument(f"n must be between 1 and {MAX_CHOICES}; got {n}", reason="INVALID_SAMPLING", param="n")
    if sampling.seed is None:
        return [sampling] * n
    return [dataclasses.replace(sampling, seed=(sampling.seed + i) % 2**64 if i else sampling.seed)
            for i in range(n)]


def choice_share(route: Route) -> int:
    """How many choices of one request run at once on route's endpoint: half the slots of its ready
    replicas, at least one. The others start as these end, so that another request finds a slot free
    of this one, or waits behind one generation of it, never behind all n."""
    return max(1, len(route.replicas) * route.slots // 2)


class ChoiceTurns:
    """The turns of one request's choices: at most `share` run at once, the others start in index order
    as earlier ones end. After a failure the choices not started never start: they mostly fail together
    (bad input), and, on no replica yet, have no call to cancel."""

    def __init__(self, share: int) -> None:
        self._running = asyncio.Semaphore(share)
        self._failed = False

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Wait for a turn; False when a choice failed meanwhile, and this one is not to run."""
        async with self._running:
            if self._failed:
                yield False
                return
            try:
                yield True
            except Exception:
                self._failed = True  # before the turn passes to the next choice
                raise


async def merge(generations: list[AsyncIterator[Chunk]], share: int) -> AsyncIterator[tuple[int, Chunk]]:
    """The chunks of a request's choices as they come, each with its choice's index; the choices
    take turns (ChoiceTurns). After a failure the running ones run to their end unread, and the
    others never start: one failing does not cancel the others, as Triton 2.51 can crash on a
    stream cancelled just as it completes (triton-inference-server/server#8078), and choices
    mostly fail together (bad input). A consumer that goes away cancels them."""
    if len(generations) == 1:
        async with contextlib.aclosing(generations[0]) as chunks:  # closed now, not when collected
            async for chunk in chunks:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()
    turns = ChoiceTurns(share)

    async def pump(index: int, chunks: AsyncIterator[Chunk]) -> None:
        try:
            async with turns.turn() as mine:
                if not mine:
                    return
                async for chunk in chunks:
                    await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, chunks), name=f"choice-{i}") for i, chunks in enumerate(generations)]
    failed = False
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                failed = True
                raise item
            else:
                yield index, item
    finally:
        if not failed:  # the client gone (or done): the other choices stop on their replicas
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_prompt_length(route: Route, prompt: str, param: str) -> None:
    """Refuse, before anything reaches Triton, a prompt that cannot fit the context; the model counts
    the tokens of the rest exactly (400 with the count when it does not fit)."""
    context = context_length(route.metadata)
    if len(prompt) > context * CHARS_PER_TOKEN_BOUND:
        raise InvalidArgument(
            f"the prompt is {len(prompt)} characters; endpoint {route.name} holds {context} tokens of context, "
            f"and more than {context * CHARS_PER_TOKEN_BOUND} characters cannot fit", reason="PROMPT_TOO_LONG",
            param=param)


def check_embedding_input(endpoint: str, inputs: list[str] | list[list[int]], limits: EmbeddingLimits) -> None:
    """Refuse, before anything reaches Triton, what cannot fit the model's limits: more inputs, or
    inputs of more characters than CHARS_PER_TOKEN_BOUND a token, or of more token ids than tokens
    (the model adds its prefix and special tokens to ids too). The model counts the tokens of the rest
    exactly (the same limits) before it embeds anything."""
    if inputs and not isinstance(inputs[0], str):
        kind, unit, input_bound, request_bound = ("token-id arrays", "token ids", limits.input_tokens,
                                                   limits.request_tokens)
    else:
        kind, unit, input_bound, request_bound = "strings", "characters", limits.input_chars, limits.request_chars
    if len(inputs) > limits.inputs:
        raise InvalidArgument(f"input holds {len(inputs)} {kind}; endpoint {endpoint} takes at most {limits.inputs} "
                              "per request", reason="TOO_MANY_INPUTS", param="input")
    for i, item in enumerate(inputs):
        if len(item) > input_bound:
            raise InvalidArgument(
                f"input {i} is {len(item)} {unit}; endpoint {endpoint} takes at most {limits.input_tokens} "
                f"tokens per input, and an input over {input_bound} {unit} cannot fit",
                reason="INPUT_TOO_LONG", param="input")
    total = sum(len(item) for item in inputs)
    if total > request_bound:
        raise InvalidArgument(
            f"the inputs are {total} {unit} in all; endpoint {endpoint} takes at most {limits.request_tokens} "
            f"tokens per request, and more than {request_bound} {unit} cannot fit",
            reason="REQUEST_TOO_LONG", param="input")


def _no_replica_left(route: Route, failure: ReplicaFailure | None) -> Unavailable:
    if failure is None:
        return Unavailable(f"endpoint {route.name} has no ready replica", reason="NO_READY_REPLICA")
    return Unavailable(f"no replica of endpoint {route.name} could answer; the last one failed: {failure}",
                       reason="REPLICA_FAILED")
