"""Per-user rate limit: a fixed one-minute window, in Redis when configured
(shared by every router replica), in process otherwise."""

from __future__ import annotations

import time

import redis.asyncio as redis

from shared.errors import RateLimited


class RateLimiter:
    def __init__(self, per_minute: int, redis_url: str | None = None) -> None:
        self._limit = per_minute
        self._redis = redis.from_url(redis_url) if redis_url else None
        self._windows: dict[str, tuple[int, int]] = {}

    async def check(self, user: str) -> None:
        if self._limit <= 0:
            return
        window = int(time.time() // 60)
        if self._redis is not None:
            key = f"llmops:ratelimit:{user}:{window}"
            async with self._redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key).expire(key, 120).execute()
        else:
            start, count = self._windows.get(user, (window, 0))
            count = count + 1 if start == window else 1
            self._windows[user] = (window, count)
        if count > self._limit:
            raise RateLimited(f"rate limit exceeded: {self._limit} requests per minute per user; retry shortly",
                              reason="RATE_LIMITED")

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
