"""In-process fan-out of endpoint changes to WatchEndpoints subscribers.

Each subscriber keeps at most one pending event per endpoint (the latest): a
subscriber that reads slowly, or not at all, costs memory bounded by the
number of endpoints, not by the number of changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointEvent:
    kind: str  # upsert | delete
    endpoint_id: str


class Subscription:
    def __init__(self) -> None:
        self._pending: dict[str, EndpointEvent] = {}  # by endpoint id, oldest first
        self._ready = asyncio.Event()

    def put(self, event: EndpointEvent) -> None:
        # A newer event for the same endpoint replaces the older one (the watch re-reads its state).
        self._pending.pop(event.endpoint_id, None)
        self._pending[event.endpoint_id] = event
        self._ready.set()

    async def get(self) -> EndpointEvent:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.pop(next(iter(self._pending)))

    def qsize(self) -> int:
        return len(self._pending)


class EndpointEvents:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, event: EndpointEvent) -> None:
        for subscription in self._subscribers:
            subscription.put(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
