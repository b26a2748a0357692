"""What happened to each inference request, handed off after the response
without delaying it: a bounded queue drained by a background task into a
Redis stream (when configured) for the experiment service, and a short
in-memory history."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import asdict, dataclass

import redis.asyncio as redis
import structlog
from prometheus_client import Counter

log = structlog.get_logger()
STREAM = "llmops:outcomes"
DROPPED = Counter("llmops_outcomes_dropped_total", "Outcome records dropped because the hand-off queue was full.")


@dataclass(frozen=True)
class Outcome:
    request_id: str
    endpoint: str
    route: str
    user: str
    kind: str  # chat | completion | embedding
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: str = ""
    experiment_id: str = ""
    variant: str = ""
    template_id: str = ""


class OutcomeSink:
    def __init__(self, redis_url: str | None = None, *, history: int = 1000) -> None:
        self._queue: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=10_000)
        self._redis = redis.from_url(redis_url) if redis_url else None
        self.recent: deque[Outcome] = deque(maxlen=history)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="outcome-sink")

    def record(self, outcome: Outcome) -> None:
        try:
            self._queue.put_nowait(outcome)
        except asyncio.QueueFull:
            DROPPED.inc()

    async def _drain(self) -> None:
        while True:
            outcome = await self._queue.get()
            self.recent.append(outcome)
            if self._redis is not None:
                try:
                    await self._redis.xadd(STREAM, {"outcome": json.dumps(asdict(outcome))}, maxlen=100_000,
                                           approximate=True)
                except redis.RedisError as exc:
                    log.warning("outcome not stored", error=str(exc))

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._redis is not None:
            await self._redis.aclose()
