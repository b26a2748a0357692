"""Streaming through the gateway: server-sent events for REST and the OpenAI
client, a server-streaming gRPC method for native clients, and a client that
goes away cancelling the generation on the replica."""

from __future__ import annotations

import json
import time

import grpc
import requests

from llmops.v1 import inference_pb2, inference_pb2_grpc

from ..helpers import SEED_MESSAGES, USER, identity


def sse_events(response: requests.Response):
    """(arrival time, parsed data) for each `data:` line of an SSE response."""
    for line in response.iter_lines():
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload and payload != b"[DONE]":
                yield time.monotonic(), json.loads(payload)


def test_chat_stream_sends_tokens_as_they_are_generated(infer):
    body = {"messages": SEED_MESSAGES, "temperature": 0, "max_tokens": 48, "stream": True}
    with requests.post(f"{infer.gateway.api}/serve/chat-model/chat", json=body, headers=USER, stream=True,
                       timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r))
    assert len(events) > 5
    chunks = [e for _, e in events]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text.strip()
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] > 0
    # Tokens arrive while the model is still generating, not all at the end.
    first_at, last_at = events[0][0], events[-1][0]
    assert last_at - first_at > 0.1


def test_stream_false_answers_one_envelope(infer):
    body = {"messages": SEED_MESSAGES, "max_tokens": 4, "stream": False}
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat", json=body, headers=USER)
    assert r.status_code == 200 and r.json()["status"] == "success"


def test_completion_stream(infer):
    body = {"prompt": "LLM Ops 플랫폼은", "max_tokens": 16, "stream": True}
    with requests.post(f"{infer.gateway.api}/serve/chat-model/completion", json=body, headers=USER,
                       stream=True) as r:
        chunks = [e for _, e in sse_events(r)]
    assert chunks and chunks[-1]["usage"]["completion_tokens"] > 0


def test_stream_to_an_unknown_endpoint_is_a_404_envelope(infer):
    r = requests.post(f"{infer.gateway.api}/serve/nope/chat", json={"messages": SEED_MESSAGES, "stream": True},
                      headers=USER)
    assert r.status_code == 404 and r.json()["status"] == "error"


def test_cancelling_mid_stream_frees_the_replica(infer):
    pool = infer.router.pool
    body = {"messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": 1500, "temperature": 0.8, "stream": True}
    before = len(infer.router.outcomes.recent)
    with requests.post(f"{infer.gateway.api}/serve/chat-model/chat", json=body, headers=USER, stream=True) as r:
        events = sse_events(r)
        for _ in range(3):
            next(events)
        [address] = infer.router.table.get("chat-model").replicas
        assert pool.outstanding(address) == 1
    # The response is closed: the router cancels the Triton stream and the replica is free again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pool.outstanding(address):
        time.sleep(0.05)
    assert pool.outstanding(address) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(infer.router.outcomes.recent) == before:
        time.sleep(0.05)
    assert infer.router.outcomes.recent[-1].error == "CANCELLED"
    assert infer.router.outcomes.recent[-1].completion_tokens < 1500
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat",
                      json={"messages": SEED_MESSAGES, "max_tokens": 2}, headers=USER, timeout=30)
    assert r.status_code == 200


def test_openai_client_streaming_chat(infer):
    import openai
    client = openai.OpenAI(base_url=f"{infer.gateway.url}/v1", api_key="unused",
                           default_headers={"X-User-Id": "sdk-user"})
    stream = client.chat.completions.create(model="chat-model", stream=True, max_tokens=24,
                                            messages=[{"role": "user", "content": "Tell me about the sea."}])
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 3 and "".join(pieces).strip()


def test_native_grpc_stream_through_the_gateway(infer):
    stub = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(infer.gateway.grpc_address))
    request = inference_pb2.ChatStreamRequest(request=inference_pb2.ChatRequest(
        name="chat-model", messages=[inference_pb2.ChatMessage(role="user", content="Hello!")], max_tokens=12))
    chunks = list(stub.ChatStream(request, metadata=identity("grpc-user", "viewer"), timeout=60))
    assert len(chunks) > 2
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices[0].finish_reason
