"""The inference router's resilience, in process: the route watch outlives any
error, the deadline bounds the waits on a replica and never the caller's code,
in-process maps let go of what is gone, and a replica whose model process died
is retried elsewhere (before the first token only) and kept out of rotation.
The fake Triton replicas and the fake deployment service speak the real gRPC
protocols, so tritonclient's own success and error paths run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2_grpc

from llmops.v1 import deployment_pb2, deployment_pb2_grpc, inference_pb2, inference_pb2_grpc
from router.backends import ReplicaChannel, ReplicaPool
from router.limits import RateLimiter
from router.prompting import Message, SamplingRequest
from router.routes import RouteTable, follow
from router.server import start as start_router
from router.service import InferenceService
from shared.errors import DeadlineExceeded, InvalidArgument, RateLimited, Unavailable
from shared.identity import Identity
from shared.settings import Settings

from ..fakes import EMBEDDING_DIM as DIM
from ..fakes import FakeDeployment, FakeTriton, RecordedOutcomes, no_experiments, routed, snapshot
from ..helpers import LoopThread, free_port, identity

ALICE = Identity("alice", frozenset({"researcher"}))


Serve = Callable[[Callable[[Any, grpc.aio.Server], None], Any], Awaitable[str]]


@pytest.fixture
def serve(loop_thread: LoopThread) -> Iterator[Serve]:
    """Start a gRPC server for a servicer on a free port (in the loop thread); stopped after the test."""
    servers: list[grpc.aio.Server] = []

    async def start(add: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> str:
        server = grpc.aio.server()
        add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        loop_thread.run(server.stop(0))


async def triton(serve: Serve, behaviour: str = "answers") -> tuple[FakeTriton, str]:
    fake = FakeTriton(behaviour)
    return fake, await serve(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, fake)


# the router's use cases on a real pool --------------------------------------------------------------------



def inference(pool: ReplicaPool, *endpoints: deployment_pb2.RoutedEndpoint, timeout_s: float = 30.0,
              queue_limit: int = 8) -> tuple[InferenceService, RouteTable, RecordedOutcomes]:
    table = RouteTable()
    pool.follow_table(table)
    table.apply(snapshot(*endpoints))
    outcomes = RecordedOutcomes()
    service = InferenceService(table=table, pool=pool, limiter=RateLimiter(0), outcomes=outcomes,
                               timeout_s=timeout_s, max_output_tokens=64, queue_limit=queue_limit,
                               experiments=no_experiments())
    return service, table, outcomes


def chat(service: InferenceService, name: str = "chat-model", *, buffered: bool = False):  # noqa: ANN201
    return service.chat_stream(actor=ALICE, name=name, messages=[Message("user", "Hi")],
                               sampling=SamplingRequest(), buffered=buffered)


async def stream(service: InferenceService, name: str = "chat-model"):  # noqa: ANN201
    """A chat's chunks as a client reads them."""
    answer = await chat(service, name)
    async for _, chunk in answer.choices:
        yield chunk


def requests_counted(endpoint: str, kind: str, code: str) -> float:
    return REGISTRY.get_sample_value("llmops_inference_requests_total",
                                     {"endpoint": endpoint, "kind": kind, "code": code}) or 0.0


# 1. the route watch ---------------------------------------------------------------------------------------

class RouteTableWithABug(RouteTable):
    """Fails to apply the first event it gets, as a bug in apply or a listener would."""

    def apply(self, event: deployment_pb2.WatchEndpointsResponse) -> None:
        if not getattr(self, "failed_once", False):
            self.failed_once = True
            raise RuntimeError("a bug while applying an event")
        super().apply(event)


def test_route_watch_reconnects_after_any_error_and_still_stops_when_cancelled(loop_thread, serve):
    async def scenario() -> None:
        deployment = FakeDeployment([routed("chat-model", ["127.0.0.1:1"])])
        address = await serve(deployment_pb2_grpc.add_DeploymentServiceServicer_to_server, deployment)
        table = RouteTableWithABug()
        watcher = asyncio.create_task(follow(table, address=address))
        synced = asyncio.create_task(table.synced.wait())
        await asyncio.wait({watcher, synced}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert not watcher.done(), f"the watcher died: {watcher.exception()!r}"
        assert synced.done() and table.get("chat-model").replicas == ("127.0.0.1:1",)
        assert deployment.watches == 2  # it reconnected after the failed event
        watcher.cancel()
        await asyncio.wait({watcher}, timeout=10)
        assert watcher.cancelled()

    loop_thread.run(scenario())


# 2. the deadline ------------------------------------------------------------------------------------------

def test_deadline_bounds_the_waits_on_the_replica_never_the_callers_code(loop_thread, serve):
    timeout_s = 1.0

    async def scenario() -> None:
        replica, address = await triton(serve, "stalls_after_first_token")
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("chat-model", [address]), timeout_s=timeout_s)
        before = requests_counted("chat-model", "chat", "DEADLINE_EXCEEDED")
        chunks = stream(service)

        async def caller() -> tuple[str, Exception]:
            first = await anext(chunks)
            await asyncio.sleep(timeout_s * 2)  # the caller's own work (a slow client), past the deadline
            try:
                await anext(chunks)
            except DeadlineExceeded as exc:
                return first.text, exc
            raise AssertionError("the stalled replica's next token came")

        task = asyncio.create_task(caller())
        await asyncio.wait({task}, timeout=30)
        assert not task.cancelled(), "the deadline cancelled the caller's code"
        first, exc = task.result()
        assert first == "Hello"
        assert (exc.code, exc.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
        assert outcomes.recorded[-1].error == "DEADLINE_EXCEEDED"
        assert requests_counted("chat-model", "chat", "DEADLINE_EXCEEDED") == before + 1
        assert pool.outstanding(address) == 0  # the stalled stream was cancelled, its lease returned
        await pool.close()

    loop_thread.run(scenario())


def test_unexpected_error_is_counted_internal_and_propagates(loop_thread, serve):
    async def scenario() -> None:
        _, address = await triton(serve, "breaks_contract")
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("contract-model", [address]))
        before = requests_counted("contract-model", "chat", "INTERNAL")
        with pytest.raises(KeyError):  # the missing counts: a bug, not a domain error
            await service.collect(await chat(service, "contract-model"), "contract-model")
        assert outcomes.recorded[-1].error == "INTERNAL"
        assert requests_counted("contract-model", "chat", "INTERNAL") == before + 1
        await pool.close()

    loop_thread.run(scenario())


# 3. maps that only grew -----------------------------------------------------------------------------------

def test_rate_limiter_keeps_only_the_current_minutes_windows(loop_thread):
    now = [60.0 * 1000]
    limiter = RateLimiter(2, clock=lambda: now[0])

    async def scenario() -> None:
        for n in range(500):
            await limiter.check(f"user-{n}")
        await limiter.check("alice")
        await limiter.check("alice")
        with pytest.raises(RateLimited):
            await limiter.check("alice")
        assert limiter.tracked_users() == 501
        now[0] += 60  # the next minute
        await limiter.check("alice")
        assert limiter.tracked_users() == 1
        await limiter.check("alice")
        with pytest.raises(RateLimited):
            await limiter.check("alice")

    loop_thread.run(scenario())


def test_clients_of_replicas_that_left_the_route_table_close_once_idle(loop_thread, serve):
    closed: list[str] = []

    class RecordingClient(ReplicaChannel):
        def __init__(self, address: str) -> None:
            super().__init__(address)
            self.address = address

        async def close(self) -> None:
            closed.append(self.address)
            await super().close()

    async def eventually(condition: Callable[[], bool]) -> bool:
        for _ in range(1000):
            if condition():
                return True
            await asyncio.sleep(0.01)
        return condition()

    async def scenario() -> None:
        busy_replica, busy = await triton(serve, "stalls_after_first_token")
        _, idle = await triton(serve)
        _, staying = await triton(serve)
        pool = ReplicaPool(client_factory=RecordingClient)
        service, table, _ = inference(pool, routed("chat-model", [busy, idle, staying]))
        in_flight = stream(service)
        assert (await anext(in_flight)).text == "Hello"  # on busy (first of the least loaded)
        assert pool.outstanding(busy) == 1
        answered = (await service.collect(await chat(service), "chat-model"))[0]  # on idle: busy has one in flight
        assert answered.text == "Hello world" and pool.outstanding(idle) == 0

        table.apply(snapshot(routed("chat-model", [staying])))  # the deployment service replaced two replicas
        assert await eventually(lambda: idle in closed)
        assert busy not in closed  # a request is still streaming from it

        busy_replica.release.set()
        assert [chunk.text async for chunk in in_flight] == [" world"]
        assert await eventually(lambda: busy in closed)
        assert staying not in closed
        assert (pool._clients.keys(), pool._outstanding) == (set(), {})  # nothing left of the two
        await pool.close()

    loop_thread.run(scenario())


# 4. a replica whose model died ----------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["model_died", "refused"])
def test_chat_is_retried_on_another_replica_when_one_failed_before_the_first_token(loop_thread, serve, failure):
    async def scenario() -> None:
        if failure == "refused":
            failing, broken = None, f"127.0.0.1:{free_port()}"  # nothing listens there
        else:
            failing, broken = await triton(serve, failure)
        healthy, address = await triton(serve)
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("chat-model", [broken, address]))

        answer = (await service.collect(await chat(service), "chat-model"))[0]
        assert answer.text == "Hello world" and outcomes.recorded[-1].error == ""
        assert healthy.requests == 1 and pool.cooling(broken)

        await service.collect(await chat(service), "chat-model")  # the next request does not try the failed one
        assert healthy.requests == 2
        if failing is not None:
            assert failing.requests == 1
        await pool.close()

    loop_thread.run(scenario())


@pytest.mark.parametrize("failure", ["model_died", "refused"])
def test_embeddings_are_retried_on_another_replica_when_one_failed(loop_thread, serve, failure):
    async def scenario() -> None:
        if failure == "refused":
            failing, broken = None, f"127.0.0.1:{free_port()}"
        else:
            failing, broken = await triton(serve, failure)
        healthy, address = await triton(serve)
        pool = ReplicaPool()
        service, _, _ = inference(pool, routed("embedding-model", [broken, address], "embedding"))

        result = await service.embed(actor=ALICE, name="embedding-model", texts=["a", "b"])
        assert result.vectors.shape == (2, DIM) and healthy.requests == 1 and pool.cooling(broken)
        await service.embed(actor=ALICE, name="embedding-model", texts=["c"])
        assert healthy.requests == 2
        if failing is not None:
            assert failing.requests == 1
        await pool.close()

    loop_thread.run(scenario())


def test_no_retry_once_the_first_token_was_sent(loop_thread, serve):
    async def scenario() -> None:
        dying, broken = await triton(serve, "dies_after_first_token")
        healthy, address = await triton(serve)
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("chat-model", [broken, address]))
        received = []
        with pytest.raises(Unavailable) as failed:
            async for chunk in stream(service):
                received.append(chunk.text)
        assert received == ["Hello"]
        assert "mid-request" in failed.value.message and "is not healthy" in failed.value.message
        assert (dying.requests, healthy.requests) == (1, 0)
        assert pool.cooling(broken) and outcomes.recorded[-1].error == "UNAVAILABLE"
        await pool.close()

    loop_thread.run(scenario())


def test_a_unary_answer_is_retried_even_after_tokens_since_the_client_saw_none(loop_thread, serve):
    async def scenario() -> None:
        dying, broken = await triton(serve, "dies_after_first_token")
        healthy, address = await triton(serve)
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("chat-model", [broken, address]))
        generation = (await service.collect(await chat(service, buffered=True), "chat-model"))[0]
        assert generation.text and generation.finish_reason  # the healthy replica's whole answer
        assert (dying.requests, healthy.requests) == (1, 1)
        assert pool.cooling(broken) and outcomes.recorded[-1].error == ""
        await pool.close()

    loop_thread.run(scenario())


def test_a_request_the_model_rejects_is_not_retried(loop_thread, serve):
    async def scenario() -> None:
        rejecting, first = await triton(serve, "rejects")
        other, second = await triton(serve)
        pool = ReplicaPool()
        service, _, _ = inference(pool, routed("chat-model", [first, second]),
                                  routed("embedding-model", [first, second], "embedding"))
        with pytest.raises(InvalidArgument):
            await service.embed(actor=ALICE, name="embedding-model", texts=["a"])
        with pytest.raises(InvalidArgument) as rejected:
            await service.collect(await chat(service), "chat-model")
        assert rejected.value.message == "the model rejected the request: input max_tokens must be at least 1, got 0"
        assert (rejecting.requests, other.requests) == (2, 0)
        assert not pool.cooling(first)
        await pool.close()

    loop_thread.run(scenario())


def test_a_replica_stays_out_of_rotation_only_for_its_cooldown(loop_thread, serve):
    now = [0.0]

    async def scenario() -> None:
        failing, broken = await triton(serve, "model_died")
        healthy, address = await triton(serve)
        pool = ReplicaPool(cooldown_s=5.0, clock=lambda: now[0])
        service, _, _ = inference(pool, routed("chat-model", [broken, address]))
        await service.collect(await chat(service), "chat-model")
        assert pool.cooling(broken) and failing.requests == 1
        failing.behaviour = "answers"  # Triton restarted the model meanwhile
        now[0] += 5.0
        assert not pool.cooling(broken)
        await service.collect(await chat(service), "chat-model")  # least outstanding again: the first listed
        assert (failing.requests, healthy.requests) == (2, 1)
        await pool.close()

    loop_thread.run(scenario())


def test_router_answers_through_another_replica_while_a_dead_one_is_replaced(loop_thread, serve):
    """The whole router as it runs: fed by the watch, over gRPC, through the servicer and the interceptor."""
    async def scenario() -> None:
        failing, broken = await triton(serve, "model_died")
        healthy, address = await triton(serve)
        deployment = FakeDeployment([routed("chat-model", [broken, address])])
        deployment_address = await serve(deployment_pb2_grpc.add_DeploymentServiceServicer_to_server, deployment)
        settings = Settings(host="127.0.0.1", deployment_port=int(deployment_address.rsplit(":", 1)[1]),
                            environment="dev", rate_limit_per_minute=0, redis_url=None, _env_file=None)
        router = await start_router(settings, port=0)
        try:
            await asyncio.wait_for(router.table.synced.wait(), 30)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.running.port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                request = inference_pb2.ChatRequest(
                    name="chat-model", messages=[inference_pb2.ChatMessage(role="user", content="Hi")])
                response = await stub.Chat(request, metadata=identity("alice", "researcher"))
                assert response.choices[0].message.content == "Hello world"
                assert (failing.requests, healthy.requests) == (1, 1) and router.pool.cooling(broken)

                # The deployment service takes the dead replica out: its cooldown and client go with it.
                await deployment.changes.put(deployment_pb2.WatchEndpointsResponse(
                    kind="upsert", endpoints=[routed("chat-model", [address])]))
                for _ in range(1000):
                    if router.table.get("chat-model").replicas == (address,):
                        break
                    await asyncio.sleep(0.01)
                assert not router.pool.cooling(broken)
                stream = stub.ChatStream(inference_pb2.ChatStreamRequest(request=request),
                                         metadata=identity("alice", "researcher"))
                assert "".join([m.choices[0].delta.content async for m in stream]) == "Hello world"
                assert healthy.requests == 2
        finally:
            await router.running.stop(0)
            await router.close()

    loop_thread.run(scenario())


def test_a_full_replica_queue_answers_busy_at_once_instead_of_waiting(loop_thread, serve):
    async def scenario() -> None:
        replica, address = await triton(serve, "stalls_after_first_token")
        pool = ReplicaPool()
        # A replica of one slot (a model without `slots`, of no known runtime) with room for one waiting.
        service, _, outcomes = inference(pool, routed("chat-model", [address]), queue_limit=1)
        streams = [stream(service) for _ in range(2)]
        assert [(await anext(s)).text for s in streams] == ["Hello", "Hello"]  # both in flight on the replica
        with pytest.raises(Unavailable) as busy:
            await anext(stream(service))
        assert busy.value.reason == "ENDPOINT_BUSY" and busy.value.retry_after_s == 1
        assert replica.requests == 2  # the third never reached the replica
        replica.release.set()
        for in_flight in streams:
            assert [c.text async for c in in_flight] == [" world"]
        assert [c.text async for c in stream(service)] == ["Hello", " world"]  # room again
        await pool.close()

    loop_thread.run(scenario())


def test_a_standing_queue_beyond_the_budget_is_shed_and_a_models_budget_replaces_the_setting(loop_thread, serve):
    """Admission on the pool's clock (admission.py has the rule): a replica of one slot whose queue has
    stood above one service time since 2 s takes no request that would wait under a budget of one service
    time; a model whose metadata.queue_budget is 4 takes it, one whose budget is not a number gets the
    setting's."""
    async def scenario() -> None:
        replica, address = await triton(serve, "stalls_after_first_token")
        now = [0.0]
        pool = ReplicaPool(clock=lambda: now[0])
        patient = routed("patient-model", [address])
        patient.model.metadata.update({"queue_budget": 4})
        legacy = routed("legacy-model", [address])  # registered before the registry checked the key
        legacy.model.metadata.update({"queue_budget": "4"})
        table = RouteTable()
        pool.follow_table(table)
        table.apply(snapshot(routed("chat-model", [address]), patient, legacy))
        service = InferenceService(table=table, pool=pool, limiter=RateLimiter(0), outcomes=RecordedOutcomes(),
                                   timeout_s=30, max_output_tokens=64, queue_budget=1,
                                   experiments=no_experiments())
        admission = pool.admission  # what earlier requests taught it: S = 1 s, and two of them in flight at 0 s
        earlier = admission.started(address, slots=1, budget=1, now=-1.0)
        admission.finished(address, earlier, succeeded=True, now=0.0)
        first, second = (admission.started(address, slots=1, budget=1, now=0.0) for _ in range(2))
        streams = [stream(service) for _ in range(2)]
        assert [(await anext(s)).text for s in streams] == ["Hello", "Hello"]  # no queue has stood: both taken
        # At 2 s the first ends (S = 1.2 s) and the second starts, having waited 2 s: the mark. The streams wait.
        admission.finished(address, first, succeeded=True, now=2.0)
        now[0] = 3.5  # the mark is 1.5 s old, and the streams have waited 3.5 s
        with pytest.raises(Unavailable) as busy:
            await anext(stream(service))
        assert busy.value.reason == "ENDPOINT_BUSY" and replica.requests == 2  # it never reached the replica
        with pytest.raises(Unavailable):  # a budget that is not a number counts as none: the setting's
            await anext(stream(service, "legacy-model"))
        patient_stream = stream(service, "patient-model")  # 3.5 s is within its target, 4 S = 4.8 s
        assert (await anext(patient_stream)).text == "Hello" and replica.requests == 3
        replica.release.set()
        for in_flight in (*streams, patient_stream):
            assert [c.text async for c in in_flight] == [" world"]
        now[0] = 4.0
        admission.finished(address, second, succeeded=True, now=now[0])
        assert [c.text async for c in stream(service)] == ["Hello", " world"]  # nothing waits: taken
        await pool.close()

    loop_thread.run(scenario())


def test_a_replica_takes_as_many_requests_as_its_slots_whatever_it_learned(loop_thread, serve):
    """A llama.cpp replica runs 8 at once (shared.model_limits): 8 concurrent requests are all taken
    after requests of 10 ms taught it that any wait is over the target, a ninth waits (one may), a tenth
    is answered busy."""
    async def scenario() -> None:
        replica, address = await triton(serve, "stalls_after_first_token")
        now = [0.0]
        pool = ReplicaPool(clock=lambda: now[0])
        chat_model = routed("chat-model", [address])
        chat_model.model.runtime = "llamacpp"
        table = RouteTable()
        pool.follow_table(table)
        table.apply(snapshot(chat_model))
        service = InferenceService(table=table, pool=pool, limiter=RateLimiter(0), outcomes=RecordedOutcomes(),
                                   timeout_s=30, max_output_tokens=64, queue_limit=1, queue_budget=1,
                                   experiments=no_experiments())
        for at in range(10):
            done = pool.admission.started(address, slots=8, budget=1, now=at)
            pool.admission.finished(address, done, succeeded=True, now=at + 0.01)
        streams = []
        for at in range(9):
            now[0] = 100.0 + at
            streams.append(stream(service))
            assert (await anext(streams[-1])).text == "Hello"
        with pytest.raises(Unavailable) as busy:
            await anext(stream(service))
        assert busy.value.reason == "ENDPOINT_BUSY" and "all 8 slots running and 1 more" in str(busy.value)
        assert replica.requests == 9
        replica.release.set()
        for in_flight in streams:
            assert [c.text async for c in in_flight] == [" world"]
        await pool.close()

    loop_thread.run(scenario())


def test_an_empty_rendered_prompt_is_the_templates_fault_not_the_replicas(loop_thread, serve):
    async def scenario() -> None:
        replica, address = await triton(serve)
        pool = ReplicaPool()
        endpoint = routed("chat-model", [address])
        endpoint.model.metadata.update({"chat_template": "{% if false %}{{ messages }}{% endif %}   "})
        service, _, _ = inference(pool, endpoint)
        with pytest.raises(InvalidArgument, match="rendered an empty prompt"):
            await chat(service)  # refused before anything is generated
        assert replica.requests == 0
        await pool.close()

    loop_thread.run(scenario())


def test_logprobs_a_model_does_not_give_are_a_400_not_an_empty_list(loop_thread, serve):
    """A model without the logprobs output (a TensorRT-LLM ensemble, say) answers: the request
    asked for log-probabilities, so an answer without them is refused, never passed off as none."""
    async def scenario() -> None:
        _, address = await triton(serve)
        pool = ReplicaPool()
        service, _, _ = inference(pool, routed("plain-model", [address]))
        answer = await service.chat_stream(actor=ALICE, name="plain-model", messages=[Message("user", "Hi")],
                                           sampling=SamplingRequest(logprobs=True), buffered=True)
        with pytest.raises(InvalidArgument) as refused:
            await service.collect(answer, "plain-model")
        assert refused.value.param == "logprobs"
        plain = (await service.collect(await chat(service, "plain-model", buffered=True), "plain-model"))[0]
        assert plain.text and plain.logprobs == ()
        await pool.close()

    loop_thread.run(scenario())


def test_a_call_is_cancelled_on_the_replica_only_while_it_is_open(loop_thread, serve):
    """Triton 2.51 now and then segfaults on a cancel that races the end of a call (server#8078): a
    generation that got its last response, or an error, reads the call's status instead of cancelling."""
    async def scenario() -> None:
        answering, first = await triton(serve)
        rejecting, second = await triton(serve, "rejects")
        stalling, third = await triton(serve, "stalls_after_first_token")
        pool = ReplicaPool()
        service, _, _ = inference(pool, routed("answers", [first]), routed("rejects", [second]),
                                  routed("stalls", [third]))
        answering.linger_s = rejecting.linger_s = 0.1  # well inside the router's wait for the status
        for _ in range(3):
            assert (await service.collect(await chat(service, "answers"), "answers"))[0].text == "Hello world"
            with pytest.raises(InvalidArgument):
                await service.collect(await chat(service, "rejects"), "rejects")
        chunks = stream(service, "stalls")
        assert (await anext(chunks)).text == "Hello"
        await chunks.aclose()  # the client went away mid-generation
        for fake, ended in ((answering, ["ok"] * 3), (rejecting, ["ok"] * 3), (stalling, ["cancelled"])):
            await asyncio.wait_for(_ended(fake, len(ended)), 10)
            assert fake.calls == ended
        await pool.close()

    loop_thread.run(scenario())


async def _ended(fake: FakeTriton, calls: int) -> None:
    while len(fake.calls) < calls:
        await asyncio.sleep(0.01)


# 6. one request's choices and the others -------------------------------------------------------------------

def test_an_n_request_runs_on_half_the_ready_replicas_and_leaves_the_rest_to_other_requests(loop_thread, serve):
    """All eight choices of an n=8 request at once queued two on each of four replicas, and another
    user's request waited behind two generations. The choices take turns, two at a time (half of
    four replicas, each running one generation at a time): the other request finds a replica with
    none of them, and every choice still comes under its own index."""
    async def scenario() -> None:
        fakes = [await triton(serve, "stalls_after_first_token") for _ in range(4)]
        pool = ReplicaPool()
        service, _, _ = inference(pool, routed("chat-model", [address for _, address in fakes]))
        answer = await service.chat_stream(actor=ALICE, name="chat-model", messages=[Message("user", "Hi")],
                                           sampling=SamplingRequest(), n=8)
        choices = answer.choices
        first = [await anext(choices) for _ in range(2)]  # each choice is held after its first token
        assert sorted(index for index, _ in first) == [0, 1]
        other = stream(service)
        assert (await anext(other)).text == "Hello"
        assert sorted(fake.requests for fake, _ in fakes) == [0, 1, 1, 1]  # two choices, the other request
        for fake, _ in fakes:
            fake.release.set()
        texts: dict[int, str] = {}
        for index, chunk in first + [item async for item in choices]:
            texts[index] = texts.get(index, "") + chunk.text
        assert texts == {i: "Hello world" for i in range(8)}
        assert [c.text async for c in other] == [" world"]
        assert sum(fake.requests for fake, _ in fakes) == 9
        await pool.close()

    loop_thread.run(scenario())
