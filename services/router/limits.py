"""Per-user rate limit: a fixed one-minute window, in Redis when configured
(shared by every router replica), in process otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as redis

from shared.errors import RateLimited


class RateLimiter:
    def __init__(self, per_minute: int, redis_url: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._limit = per_minute
        self._redis = redis.from_url(redis_url) if redis_url else None
        self._clock = clock
        # In process: counts of the current minute only; a new minute starts an empty map.
        self._window = -1
        self._counts: dict[str, int] = {}

    async def check(self, user: str) -> None:
        if self._limit <= 0:
            return
        window = int(self._clock() // 60)
        if self._redis is not None:
            key = f"llmops:ratelimit:{user}:{window}"
            async with self._redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key).expire(key, 120).execute()
        else:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts[user] = self._counts.get(user, 0) + 1
        if count > self._limit:
            raise RateLimited(f"rate limit exceeded: {self._limit} requests per minute per user; retry shortly",
                              reason="RATE_LIMITED")

    def tracked_users(self) -> int:
        """Users counted in process (the current minute's)."""
        return len(self._counts)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
