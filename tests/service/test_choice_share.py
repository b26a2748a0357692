"""One request's n choices take a share of its endpoint, never all of it, so that another user's
request reaches a replica behind at most one generation of it: through the real Envoy and router
to a replica that holds each generation after its first token until released (tests/service/
conftest.py `fake_serving`, one replica: a share of one choice at a time). What reached the replica,
and in which order, shows it; nothing is timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ..fakes import FakeTriton
from ..helpers import openai_post, wait_for

HI = [{"role": "user", "content": "Say hello."}]
CHAT = "chat-model"
ANOTHER_USER = {"X-User-Id": "another-user", "X-User-Roles": "researcher"}


@pytest.fixture
def held_replica(fake_serving, loop_thread) -> Iterator[FakeTriton]:
    triton = fake_serving.triton
    loop_thread.loop.call_soon_threadsafe(triton.release.clear)
    triton.behaviour = "stalls_after_first_token"
    try:
        yield triton
    finally:
        triton.behaviour = "answers"
        loop_thread.loop.call_soon_threadsafe(triton.release.set)


def choices_of(response: requests.Response, stream: bool) -> dict[int, tuple[str, str]]:
    """Each choice's text and finish_reason by index, from a chat completion or its event stream."""
    assert response.status_code == 200, response.text
    if not stream:
        return {c["index"]: (c["message"]["content"], c["finish_reason"]) for c in response.json()["choices"]}
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        for choice in json.loads(line[len("data: "):])["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                reasons[choice["index"]] = choice["finish_reason"]
    return {index: (text, reasons.get(index)) for index, text in texts.items()}


@pytest.mark.parametrize("stream", [False, True])
def test_another_users_request_reaches_the_replica_before_the_rest_of_an_n_8_request(
        fake_serving, held_replica, loop_thread, stream):
    gateway, before = fake_serving.gateway, held_replica.requests
    many_body = {"model": CHAT, "messages": HI, "n": 8, "max_tokens": 200, "stream": stream}
    with ThreadPoolExecutor(2) as pool:
        try:
            many = pool.submit(openai_post, gateway, "/v1/chat/completions", many_body)
            wait_for("the n=8 request's first choice on the replica", lambda: held_replica.requests > before, 30)
            other = pool.submit(requests.post, f"{gateway.url}/v1/chat/completions", headers=ANOTHER_USER,
                                timeout=120, json={"model": CHAT, "messages": HI, "max_tokens": 2})
            wait_for("the other user's request on the replica", lambda: held_replica.requests >= before + 2, 30)
            # The replica got one choice of the n=8 request, then the other user's request: the
            # n=8 request's other seven choices wait for their turn, off the replica.
            assert held_replica.requests == before + 2
        finally:
            loop_thread.loop.call_soon_threadsafe(held_replica.release.set)
        answer, response = other.result(), many.result()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello world"
    # All eight choices still come, each under its own index, whole.
    assert choices_of(response, stream) == {i: ("Hello world", "stop") for i in range(8)}
    assert held_replica.requests == before + 9
