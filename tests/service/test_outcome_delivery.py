"""Experiment outcomes from the router to the experiment service, exactly once: the
router's journal across crashes, delivery that retries without losing or repeating,
and the Redis stream read as a consumer group (real Redis) by a consumer that dies
mid-batch."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import requests

from llmops.v1 import experiment_pb2
from router import outcomes as outcomes_module
from router.outcomes import Outcome, OutcomeJournal, OutcomeSink, redis_delivery

from ..helpers import ADMIN, RESEARCHER, approved_model, assert_envelope, deploy, deploy_body, unique

REDIS_URL = "redis://127.0.0.1:6379/0"


def outcome(i: int, experiment_id: str = "e", template_id: str = "t", variant: str = "A") -> Outcome:
    return Outcome(request_id=f"req-{i}", endpoint="chat-model", route="/llm-ops/v1/serve/chat-model", user=f"u{i}",
                   kind="chat", latency_ms=10.0 + i, prompt_tokens=5, completion_tokens=1,
                   experiment_id=experiment_id, variant=variant, template_id=template_id, at=1_764_000_000.0)


def serialized(i: int) -> bytes:
    return outcome(i).to_proto().SerializeToString()


def test_the_journal_keeps_what_was_not_delivered_across_a_crash(tmp_path):
    path = tmp_path / "outcomes.log"
    journal = OutcomeJournal(path)
    for i in range(3):
        assert journal.append(serialized(i))
    journal.acknowledge(1)
    journal.close()  # the process dies here: nothing else is written
    again = OutcomeJournal(path)
    assert again.pending(10) == [serialized(1), serialized(2)]
    again.acknowledge(2)
    again.close()
    assert OutcomeJournal(path).pending(10) == []


def test_a_line_a_crash_cut_short_is_dropped_and_the_journal_goes_on(tmp_path):
    path = tmp_path / "outcomes.log"
    journal = OutcomeJournal(path)
    journal.append(serialized(0))
    journal.close()
    with open(path, "ab") as f:
        f.write(b"AAAA")  # half a line: the write that a kill -9 interrupted
    again = OutcomeJournal(path)
    assert again.pending(10) == [serialized(0)]
    again.append(serialized(1))
    again.close()
    assert OutcomeJournal(path).pending(10) == [serialized(0), serialized(1)]


def test_one_router_per_journal(tmp_path):
    OutcomeJournal(tmp_path / "outcomes.log")
    with pytest.raises(RuntimeError, match="in use by another router"):
        OutcomeJournal(tmp_path / "outcomes.log")


def test_a_delivered_journal_starts_over_and_a_full_one_drops_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(outcomes_module, "COMPACT_BYTES", 100)
    path = tmp_path / "outcomes.log"
    journal = OutcomeJournal(path, max_pending=3)
    for i in range(3):
        assert journal.append(serialized(i))
    dropped = outcomes_module.DROPPED._value.get()
    sink = OutcomeSink(journal)
    sink.record(outcome(3))
    assert outcomes_module.DROPPED._value.get() == dropped + 1 and len(journal) == 3
    journal.acknowledge(3)
    assert path.stat().st_size == 0
    journal.append(serialized(4))
    journal.close()
    assert OutcomeJournal(path).pending(10) == [serialized(4)]


def test_outcomes_without_an_experiment_stay_out_of_the_journal(tmp_path):
    journal = OutcomeJournal(tmp_path / "outcomes.log")
    sink = OutcomeSink(journal)
    sink.record(Outcome("r", "e", "/r", "u", "chat", 1.0, 1, 1))
    assert len(journal) == 0 and len(sink.recent) == 1


async def test_delivery_retries_until_it_gets_through_and_sends_each_once(tmp_path):
    delivered: list[bytes] = []
    failures = 3

    async def flaky(batch: list[bytes]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("experiment service down")
        delivered.extend(batch)

    journal = OutcomeJournal(tmp_path / "outcomes.log")
    sink = OutcomeSink(journal, flaky)
    sink.start()
    for i in range(20):
        sink.record(outcome(i))
    deadline = time.monotonic() + 30
    while sink.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sink.close()
    assert [experiment_pb2.Outcome.FromString(d).request_id for d in delivered] == [f"req-{i}" for i in range(20)]
    assert failures == 0


# ------------------------------------------------------------------ the Redis stream, with real Redis

@pytest.fixture
def running_experiment(gateway) -> dict:
    name = unique("ab")
    model = approved_model(gateway)
    assert_envelope(deploy(gateway, deploy_body(model["id"], name=name)), 200, "success")
    ids = []
    for _ in range(2):
        r = requests.post(f"{gateway.api}/prompts/templates", headers=RESEARCHER,
                          json={"name": unique("p"), "content": "Hi", "modelType": "chat", "endpoint": name})
        ids.append(assert_envelope(r, 200, "success")["data"]["id"])
    r = requests.post(f"{gateway.api}/prompts/experiments", headers=RESEARCHER,
                      json={"templateAId": ids[0], "templateBId": ids[1], "allocation": 50, "metric": "latency_ms"})
    return assert_envelope(r, 200, "success")["data"]


def count(gateway, experiment_id: str) -> int:
    r = requests.get(f"{gateway.api}/prompts/experiments/{experiment_id}", headers=ADMIN)
    return sum(int(v.get("count", 0)) for v in assert_envelope(r, 200, "success")["data"]["variants"])


async def test_the_stream_is_counted_once_when_a_consumer_dies_mid_batch(gateway, experiment, running_experiment):
    from experiment.ingest import RedisOutcomeConsumer

    e = running_experiment
    stream = f"test:outcomes:{uuid.uuid4().hex[:8]}"
    deliver, close = redis_delivery(REDIS_URL, stream)
    batch = [Outcome(request_id=str(uuid.uuid4()), endpoint=e["endpoint"], route="", user=f"u{i}", kind="chat",
                     latency_ms=5.0, prompt_tokens=1, completion_tokens=1, experiment_id=e["id"],
                     variant="AB"[i % 2], template_id=e["templateAId"] if i % 2 == 0 else e["templateBId"],
                     at=time.time()).to_proto().SerializeToString() for i in range(40)]
    await deliver(batch)
    await deliver(batch[:10])  # a router that resent after a crash before it acknowledged
    await deliver([b"not an outcome"])
    await close()

    calls = 0

    def dies_once(records):  # noqa: ANN001
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("killed before acknowledging")
        return experiment.service.ingest(records)

    first = RedisOutcomeConsumer(REDIS_URL, consumer="first", ingest=dies_once, stream=stream)
    task = asyncio.create_task(first.run())
    deadline = time.monotonic() + 30
    while count(gateway, e["id"]) < 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    task.cancel()
    await first.close()
    assert calls >= 2 and count(gateway, e["id"]) == 40

    import redis
    client = redis.from_url(REDIS_URL)
    try:
        assert client.xlen(stream) == 0  # ingested entries are acknowledged and deleted
        assert client.xpending(stream, "experiment")["pending"] == 0
    finally:
        client.delete(stream)
        client.close()


async def test_entries_a_dead_consumer_left_are_claimed_by_another(gateway, experiment, running_experiment):
    from experiment.ingest import RedisOutcomeConsumer

    e = running_experiment
    stream = f"test:outcomes:{uuid.uuid4().hex[:8]}"
    deliver, close = redis_delivery(REDIS_URL, stream)
    await deliver([Outcome(request_id=str(uuid.uuid4()), endpoint=e["endpoint"], route="", user="u", kind="chat",
                           latency_ms=5.0, prompt_tokens=1, completion_tokens=1, experiment_id=e["id"], variant="A",
                           template_id=e["templateAId"], at=time.time()).to_proto().SerializeToString()
                   for _ in range(5)])
    await close()

    def never(records):  # noqa: ANN001
        raise RuntimeError("this consumer dies for good")

    dead = RedisOutcomeConsumer(REDIS_URL, consumer="dead", ingest=never, stream=stream)
    task = asyncio.create_task(dead.run())
    await asyncio.sleep(1.0)  # it has read the entries, and will never acknowledge them
    task.cancel()
    await dead.close()
    heir = RedisOutcomeConsumer(REDIS_URL, consumer="heir", ingest=experiment.service.ingest, stream=stream,
                                claim_idle_ms=200)
    task = asyncio.create_task(heir.run())
    deadline = time.monotonic() + 30
    while count(gateway, e["id"]) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    task.cancel()
    await heir.close()
    assert count(gateway, e["id"]) == 5
    import redis
    redis.from_url(REDIS_URL).delete(stream)
