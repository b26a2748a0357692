"""A/B experiments on live traffic through the real gateway, router and a Triton replica: sticky
assignment by user, the chosen template as the system prompt, the experiment in the response (and
in headers on /v1), outcomes counted exactly once across an experiment-service outage and a router
restart, feedback, and the winner for everyone after conclusion. The replica runs the echo model (a
word is a token, answered at once): what is under test is the platform around the model, and 400
requests of one llama.cpp replica took minutes."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from scipy.stats import chisquare

from ..helpers import ADMIN, RESEARCHER, approved_model, assert_envelope, unique

SHORT = "Be brief."
# Much longer than SHORT: a request that got B shows it in usage.prompt_tokens.
LONG = ("You are a meticulous assistant for the {{ team | default('platform') }} team. Answer in one short "
        "sentence, never more, and do not repeat the question. " * 3)
USERS = 200
# An endpoint of its own on the shared stack: a concluded experiment keeps serving its winner on its endpoint,
# which would change what chat-model answers in every later test.
AB = "ab-chat-model"
WAIT_S = 60  # for outcomes to arrive: a bound on waiting, not a speed assertion


def say(infer, user: str, *, path: str = "chat", **extra) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0, **extra}
    return requests.post(f"{infer.gateway.api}/serve/{AB}/{path}", json=body, timeout=120,
                         headers={"X-User-Id": user, "X-User-Roles": "viewer"})


def template(infer, content: str) -> dict:
    r = requests.post(f"{infer.gateway.api}/prompts/templates", headers=RESEARCHER,
                      json={"name": unique("ab"), "content": content, "modelType": "chat", "endpoint": AB})
    return assert_envelope(r, 200, "success")["data"]


def experiment(infer, experiment_id: str) -> dict:
    r = requests.get(f"{infer.gateway.api}/prompts/experiments/{experiment_id}", headers=ADMIN, timeout=30)
    return assert_envelope(r, 200, "success")["data"]


def counted(infer, experiment_id: str) -> int:
    return sum(int(v.get("count", 0)) for v in experiment(infer, experiment_id)["variants"])


def wait_counted(infer, experiment_id: str, expected: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while counted(infer, experiment_id) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # and nothing more arrives after that (a duplicate would)
    return counted(infer, experiment_id)


def wait_router_sees(infer, experiment_id: str, status: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(active.id == experiment_id and active.running == (status == "running")
               for active in infer.router.experiments.by_endpoint.values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the router never saw experiment {experiment_id} {status}")


@pytest.fixture(scope="module")
def running(infer) -> Iterator[dict]:
    echo = approved_model(infer.gateway, name=unique("ab-echo"), runtime="echo", artifactUri="builtin://echo",
                          metadata={"context_length": 2048})  # the platform's chat template
    endpoint = infer.deploy_endpoint(AB, echo["id"])
    a, b = template(infer, SHORT), template(infer, LONG)
    r = requests.post(f"{infer.gateway.api}/prompts/experiments", headers=RESEARCHER,
                      json={"templateAId": a["id"], "templateBId": b["id"], "allocation": 50, "metric": "latency_ms"})
    e = assert_envelope(r, 200, "success")["data"]
    wait_router_sees(infer, e["id"], "running")
    yield {"experiment": e, "a": a, "b": b}
    infer.undeploy(endpoint)


def test_users_split_by_allocation_and_stick_to_their_variant(infer, running):
    e = running["experiment"]
    users = [f"user-{i}" for i in range(USERS)]
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda u: say(infer, u), users))
        again = list(pool.map(lambda u: say(infer, u), users))
    seen = {}
    for user, r1, r2 in zip(users, first, again):
        d1, d2 = (assert_envelope(r, 200, "success")["data"] for r in (r1, r2))
        assert d1["experiment"]["id"] == e["id"] and d1["experiment"] == d2["experiment"], (user, d1, d2)
        variant = d1["experiment"]["variant"]
        template_id = running["a" if variant == "A" else "b"]["id"]
        assert d1["experiment"]["templateId"] == template_id
        seen[user] = (variant, d1["usage"]["prompt_tokens"])
    b_users = sum(v == "B" for v, _ in seen.values())
    # Binomial(200, 0.5): 100 +- 4.4 standard deviations (a false alarm once in ~100,000 runs).
    assert abs(b_users - USERS / 2) <= 4.4 * math.sqrt(USERS / 4), b_users
    # The template is the system prompt: B's long one costs prompt tokens, A's short one does not.
    a_tokens = {t for v, t in seen.values() if v == "A"}
    b_tokens = {t for v, t in seen.values() if v == "B"}
    assert len(a_tokens) == 1 and len(b_tokens) == 1 and min(b_tokens) > max(a_tokens) + 40, (a_tokens, b_tokens)
    assert wait_counted(infer, e["id"], 2 * USERS) == 2 * USERS
    stats = experiment(infer, e["id"])
    assert {v["variant"]: int(v["count"]) for v in stats["variants"]} == {"A": 2 * (USERS - b_users),
                                                                        "B": 2 * b_users}
    assert {v["variant"]: int(v["users"]) for v in stats["variants"]} == {"A": USERS - b_users, "B": b_users}
    # The split check tests users, the unit of assignment, not the requests (twice as many, and
    # counted one by one they would flag a healthy split like this one about once in 50 runs).
    users_split = chisquare([USERS - b_users, b_users], [USERS / 2, USERS / 2]).pvalue
    assert stats["significance"]["srmPValue"] == pytest.approx(users_split)
    assert stats["significance"]["sampleRatioMismatch"] is bool(users_split < 0.001)


def test_the_openai_surface_says_which_variant_in_headers(infer, running):
    e = running["experiment"]
    r = requests.post(f"{infer.gateway.url}/v1/chat/completions", timeout=120,
                      headers={"X-User-Id": "user-7", "X-User-Roles": "viewer"},
                      json={"model": AB, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert r.headers["x-llmops-experiment-id"] == e["id"]
    assert r.headers["x-llmops-experiment-variant"] in ("A", "B")
    assert "experiment" not in r.json() or r.json()["experiment"]["id"] == e["id"]


def test_a_stream_carries_the_experiment(infer, running):
    r = requests.post(f"{infer.gateway.api}/serve/{AB}/chat", stream=True, timeout=120,
                      headers={"X-User-Id": "user-8", "X-User-Roles": "viewer"},
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True})
    assert r.status_code == 200 and r.headers["x-llmops-experiment-id"] == running["experiment"]["id"]
    events = [line for line in r.iter_lines() if line.startswith(b"data: {")]
    assert events and all(running["experiment"]["id"].encode() in e for e in events)


def test_feedback_only_from_the_user_who_asked(infer, running):
    r = say(infer, "rater")
    data = assert_envelope(r, 200, "success")["data"]
    url = f"{infer.gateway.api}/serve/{AB}/feedback"
    other = requests.post(url, json={"requestId": data["id"], "score": 0}, timeout=30,
                          headers={"X-User-Id": "someone-else", "X-User-Roles": "viewer"})
    assert "only they may rate it" in assert_envelope(other, 403, "error")["message"]
    mine = requests.post(url, json={"requestId": r.headers["x-request-id"], "score": 4.5}, timeout=30,
                         headers={"X-User-Id": "rater", "X-User-Roles": "viewer"})
    receipt = assert_envelope(mine, 200, "success")["data"]
    assert (receipt["experimentId"], receipt["variant"], receipt["score"]) == (
        running["experiment"]["id"], data["experiment"]["variant"], 4.5)
    variant = next(v for v in experiment(infer, running["experiment"]["id"])["variants"]
                   if v["variant"] == data["experiment"]["variant"])
    assert int(variant["feedbackCount"]) >= 1 and variant["meanFeedback"] is not None


def test_outcomes_survive_an_experiment_service_outage_and_a_router_restart(infer, running):
    e = running["experiment"]
    deadline = time.monotonic() + WAIT_S
    while infer.router.outcomes.pending() and time.monotonic() < deadline:  # earlier tests' outcomes delivered
        time.sleep(0.1)
    before = counted(infer, e["id"])
    infer.stop_experiment()
    try:
        served = [say(infer, f"outage-{i}") for i in range(12)]  # the router serves from memory meanwhile
        assert all(r.status_code == 200 and r.json()["data"]["experiment"]["id"] == e["id"] for r in served)
        assert infer.router.outcomes.pending() == 12
        infer.stop_router()  # with 12 outcomes undelivered: they wait in the journal
        infer.start_router()
    finally:
        infer.start_experiment()
    assert wait_counted(infer, e["id"], before + 12) == before + 12


def test_after_conclusion_everyone_gets_the_winner(infer, running):
    e, b = running["experiment"], running["b"]
    counted_before = wait_counted(infer, e["id"], 0)
    r = requests.post(f"{infer.gateway.api}/prompts/experiments/{e['id']}/conclude", headers=ADMIN, timeout=30,
                      json={"winnerTemplateId": b["id"], "notes": "B"})
    assert_envelope(r, 200, "success")
    wait_router_sees(infer, e["id"], "concluded")
    for i in range(10):
        data = assert_envelope(say(infer, f"user-{i}"), 200, "success")["data"]
        assert (data["experiment"]["variant"], data["experiment"]["templateId"]) == ("B", b["id"])
    assert wait_counted(infer, e["id"], counted_before) == counted_before  # no outcome after the end
