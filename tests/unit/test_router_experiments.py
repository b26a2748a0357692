"""The router's side of A/B experiments, in process, with a replica pool double that
records the prompt it is given: sticky assignment, the template as the system prompt
of a chat (with the request's variables) or the wrapper of a completion, experiments
of one kind leaving the other kind's requests alone, the winner after conclusion, and
an outcome only while the experiment runs."""

from __future__ import annotations


import pytest

from llmops.v1 import deployment_pb2, experiment_pb2
from router.experiments import ExperimentTable, assign_variant
from router.limits import RateLimiter
from router.prompting import Message, SamplingRequest
from router.routes import RouteTable
from router.service import InferenceService
from shared.errors import RateLimited
from shared.identity import Identity

from ..fakes import RecordedOutcomes, RecordingPool

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "<|im_start|>assistant\n")


def experiment(kind: str = "chat", status: str = "running", allocation: int = 50, winner: str = "",
               a: str = "Be brief.", b: str = "Be kind, {{ name | default('friend') }}.",
               endpoint_id: str = "e1") -> experiment_pb2.ActiveExperiment:
    return experiment_pb2.ActiveExperiment(
        experiment=experiment_pb2.Experiment(id="exp-1", template_a_id="ta", template_b_id="tb", allocation=allocation,
                                             endpoint="chat-model", endpoint_id=endpoint_id, status=status,
                                             model_type=kind, winner_template_id=winner),
        template_a_content=a, template_b_content=b)


def service_with(*active: experiment_pb2.ActiveExperiment,
                 limiter: RateLimiter | None = None) -> tuple[InferenceService, RecordingPool, RecordedOutcomes]:
    model = deployment_pb2.RevisionModel(name="m", version="1", type="chat")
    model.metadata.update({"chat_template": CHATML})
    table = RouteTable()
    table.apply(deployment_pb2.WatchEndpointsResponse(kind="snapshot", endpoints=[deployment_pb2.RoutedEndpoint(
        endpoint=deployment_pb2.Endpoint(id="e1", name="chat-model", environment="dev", status="healthy"),
        triton_model="llm", model=model, replicas=[deployment_pb2.Replica(id="r", grpc_address="replica:1",
                                                                         ready=True)])]))
    experiments = ExperimentTable()
    experiments.apply(experiment_pb2.WatchExperimentsResponse(kind="snapshot", experiments=list(active)))
    pool, outcomes = RecordingPool(), RecordedOutcomes()
    service = InferenceService(table=table, pool=pool, limiter=limiter or RateLimiter(0), outcomes=outcomes, timeout_s=10,
                               max_output_tokens=16, experiments=experiments)
    return service, pool, outcomes


def user_with(variant: str) -> str:
    return next(f"user-{i}" for i in range(1000) if assign_variant("exp-1", f"user-{i}", 50) == variant)


GREEDY_ONE = SamplingRequest(max_tokens=1, temperature=0)

async def chat(service: InferenceService, user: str, messages: list[Message], variables: dict | None = None):  # noqa: ANN201
    answer = await service.chat_stream(actor=Identity(user), name="chat-model", messages=messages,
                                       sampling=GREEDY_ONE, variables=variables, buffered=True)
    return (await service.collect(answer, "chat-model"))[0]


def test_assignment_is_sticky_and_follows_the_allocation():
    users = [f"u{i}" for i in range(10_000)]
    share = sum(assign_variant("exp-x", u, 30) == "B" for u in users) / len(users)
    assert 0.28 < share < 0.32
    assert all(assign_variant("exp-x", u, 30) == assign_variant("exp-x", u, 30) for u in users[:100])
    assert {assign_variant("exp-x", u, 0) for u in users[:500]} == {"A"}
    assert {assign_variant("exp-x", u, 100) for u in users[:500]} == {"B"}


async def test_the_template_replaces_the_system_prompt_with_the_requests_variables():
    service, pool, outcomes = service_with(experiment())
    generation = await chat(service, user_with("B"), [Message("system", "Ignore me."), Message("user", "Hi")],
                            {"name": "Ada"})
    assert pool.prompts == ["<|im_start|>system\nBe kind, Ada.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                            "<|im_start|>assistant"]
    assert (generation.experiment.variant, generation.experiment.template_id) == ("B", "tb")
    [outcome] = outcomes.recorded
    assert (outcome.experiment_id, outcome.variant, outcome.template_id) == ("exp-1", "B", "tb")


async def test_a_completion_experiment_wraps_the_prompt_and_leaves_chats_alone():
    service, pool, outcomes = service_with(experiment(kind="completion", a="Q: {{ prompt }}\nA:", b="{{ prompt }}"))
    user = user_with("A")
    answer = await service.complete_stream(actor=Identity(user), name="chat-model", prompt="2+2?",
                                           sampling=GREEDY_ONE, buffered=True)
    await service.collect(answer, "chat-model")
    assert pool.prompts[-1] == "Q: 2+2?\nA:"
    await chat(service, user, [Message("user", "Hi")])  # a chat on the same endpoint: no experiment
    assert "Q:" not in pool.prompts[-1]
    assert [o.experiment_id for o in outcomes.recorded] == ["exp-1", ""]


async def test_after_conclusion_everyone_gets_the_winner_and_nothing_is_counted():
    service, pool, outcomes = service_with(experiment(status="concluded", winner="tb"))
    for user in (user_with("A"), user_with("B")):
        generation = await chat(service, user, [Message("user", "Hi")])
        assert generation.experiment.variant == "B"
    assert all("Be kind, friend." in prompt for prompt in pool.prompts)
    assert [o.experiment_id for o in outcomes.recorded] == ["", ""]


@pytest.mark.parametrize("status", ["running", "concluded"])
async def test_an_experiment_of_a_deleted_endpoint_leaves_a_new_endpoint_of_its_name_alone(status):
    """chat-model here is endpoint e1; the experiment was made on an earlier chat-model, since deleted."""
    service, pool, outcomes = service_with(experiment(allocation=100, status=status, winner="tb", endpoint_id="e0"))
    generation = await chat(service, user_with("B"), [Message("system", "Mine."), Message("user", "Hi")])
    assert generation.experiment is None
    assert pool.prompts == ["<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                            "<|im_start|>assistant"]
    assert [o.experiment_id for o in outcomes.recorded] == [""]


@pytest.mark.parametrize("template, reason", [("{{ 1 // 0 }}", "TEMPLATE_ERROR"), ("   ", None)])
async def test_a_template_that_fails_is_a_400_and_an_empty_one_adds_no_system_prompt(template, reason):
    from shared.errors import InvalidArgument
    service, pool, _ = service_with(experiment(allocation=100, b=template))
    if reason:
        with pytest.raises(InvalidArgument) as refused:
            await chat(service, "anyone", [Message("user", "Hi")])
        assert refused.value.reason == reason and "the experiment's prompt template" in refused.value.message
        assert pool.prompts == []
    else:
        await chat(service, "anyone", [Message("user", "Hi")])
        assert "system" not in pool.prompts[0]


class RecordingContext:
    def __init__(self) -> None:
        self.initial_metadata: list[tuple] = []

    def invocation_metadata(self) -> tuple:
        return ()  # not through the gateway: the default environment

    async def send_initial_metadata(self, metadata) -> None:  # noqa: ANN001
        self.initial_metadata.append(tuple(metadata))


async def test_a_stream_says_its_variant_with_its_first_chunk_so_an_earlier_error_keeps_its_status():
    from llmops.v1 import inference_pb2
    from router.servicer import InferenceServicer
    from shared.errors import RateLimited
    from shared.identity import bind

    service, _, _ = service_with(experiment(allocation=100), limiter=RateLimiter(1))
    servicer, request = InferenceServicer(service), inference_pb2.ChatStreamRequest(request=inference_pb2.ChatRequest(
        name="chat-model", messages=[inference_pb2.ChatMessage(role="user", content="Hi")], max_tokens=1))
    bind(Identity("streamer"), "req-1")
    answered = RecordingContext()
    chunks = [c async for c in servicer.ChatStream(request, answered)]
    assert chunks[0].experiment.variant == "B"
    assert answered.initial_metadata == [(("x-llmops-experiment-id", "exp-1"), ("x-llmops-experiment-variant", "B"),
                                          ("x-llmops-experiment-template-id", "tb"))]
    limited = RecordingContext()
    with pytest.raises(RateLimited):  # the second request of the minute: no headers went out before the 429
        [c async for c in servicer.ChatStream(request, limited)]
    assert limited.initial_metadata == []


async def test_right_after_start_a_request_waits_for_the_experiments_and_later_never():
    import asyncio

    service, pool, _ = service_with()
    table = service._experiments
    table.synced.clear()  # a router just started: no snapshot yet
    table.by_endpoint = {}
    asyncio.get_running_loop().call_later(0.1, table.apply, experiment_pb2.WatchExperimentsResponse(
        kind="snapshot", experiments=[experiment(allocation=100)]))
    generation = await chat(service, "early", [Message("user", "Hi")])
    assert generation.experiment is not None and generation.experiment.variant == "B"

    later, _, _ = service_with()
    later._experiments.synced.clear()
    later._experiments.created -= 10  # started long ago, the experiment service still unreachable
    generation = await asyncio.wait_for(chat(later, "late", [Message("user", "Hi")]), 1)
    assert generation.experiment is None


@pytest.mark.parametrize("buffered", [True, False], ids=["unary", "stream"])
async def test_a_request_of_n_choices_counts_once_in_the_rate_limit_and_once_in_the_outcomes(buffered):
    """n=4 used to be four requests: four against the caller's rate limit (with 2 a minute, the first
    request's third choice was a 429) and four outcomes under one request id, each counted by the experiment."""
    service, pool, outcomes = service_with(experiment(), limiter=RateLimiter(2))
    user = user_with("B")
    for _ in range(2):
        answer = await service.chat_stream(actor=Identity(user), name="chat-model", messages=[Message("user", "Hi")],
                                           sampling=GREEDY_ONE, n=4, buffered=buffered)
        assert [g.text for g in await service.collect(answer, "chat-model")] == ["ok"] * 4
    assert len(pool.prompts) == 8  # every choice generated
    assert [(o.variant, o.completion_tokens, o.error) for o in outcomes.recorded] == [("B", 4, ""), ("B", 4, "")]
    third = await service.chat_stream(actor=Identity(user), name="chat-model", messages=[Message("user", "Hi")],
                                      sampling=GREEDY_ONE, n=4, buffered=buffered)
    with pytest.raises(RateLimited):
        await service.collect(third, "chat-model")
    assert len(pool.prompts) == 8 and len(outcomes.recorded) == 2
