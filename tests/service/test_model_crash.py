"""A request on which a replica's model process died costs that request only (issue 21, item 1).

Triton 2.51 answers the request that was on a dying model process and every later one with the
same words ("Stub process 'llm_0_0' is not healthy."), so the router asks the model to say when it
has a request (REPORT_START): a death after that is the request's doing, maybe, and it is not tried
on another replica, where it could kill that model too; a death before it is the replica's, and the
request is retried as before (test_router_resilience.py). The fake replicas speak Triton's gRPC
protocol (tests/fakes.py)."""

from __future__ import annotations

import pytest
import requests

from router.backends import ReplicaPool
from shared.errors import DomainError

from ..fakes import routed
from ..helpers import OPENAI_HEADERS
from .test_router_resilience import chat, inference, serve, triton  # noqa: F401 - serve is a fixture

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def test_a_request_on_which_the_model_died_is_not_tried_on_another_replica(loop_thread, serve):  # noqa: F811
    async def scenario() -> None:
        dying, broken = await triton(serve, "dies_with_the_request")
        healthy, address = await triton(serve)
        pool = ReplicaPool()
        service, _, outcomes = inference(pool, routed("chat-model", [broken, address]))

        with pytest.raises(DomainError) as crashed:
            await service.collect(await chat(service, buffered=True), "chat-model")
        assert (crashed.value.reason, crashed.value.should_retry) == ("MODEL_CRASHED", False)
        assert "not healthy" in crashed.value.message
        assert (dying.requests, healthy.requests) == (1, 0)  # the other replica never saw it
        assert outcomes.recorded[-1].error == "INTERNAL" and pool.cooling(broken)

        # The next request is another's: the failed replica sits out, the other one answers.
        answer = (await service.collect(await chat(service, buffered=True), "chat-model"))[0]
        assert answer.text == "Hello world" and (dying.requests, healthy.requests) == (1, 1)
        await pool.close()

    loop_thread.run(scenario())


def test_the_gateway_tells_openai_clients_not_to_retry_it(fake_serving):
    fake_serving.triton.behaviour = "dies_with_the_request"
    try:
        r = requests.post(f"{fake_serving.gateway.url}/v1/chat/completions", json=CHAT, headers=OPENAI_HEADERS,
                          timeout=30)
        streamed = requests.post(f"{fake_serving.gateway.url}/v1/chat/completions", json={**CHAT, "stream": True},
                                 headers=OPENAI_HEADERS, timeout=30)
    finally:
        fake_serving.triton.behaviour = "answers"
    for answer in (r, streamed):  # nothing was sent before the failure: a status of its own, streamed or not
        assert answer.status_code == 500, answer.text
        assert answer.headers["x-should-retry"] == "false"  # the OpenAI SDKs retry any 5xx but this
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == ("server_error", "internal", None)
        assert "not tried again" in error["message"]
    # The replica was the only one: a later request of another user is answered.
    later = requests.post(f"{fake_serving.gateway.url}/v1/chat/completions", json=CHAT,
                          headers={**OPENAI_HEADERS, "X-User-Id": "another-user"}, timeout=30)
    assert later.status_code == 200 and "x-should-retry" not in later.headers
