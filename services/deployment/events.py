"""In-process fan-out of endpoint changes to WatchEndpoints subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointEvent:
    kind: str  # upsert | delete
    endpoint_id: str


class EndpointEvents:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[EndpointEvent]] = set()

    def publish(self, event: EndpointEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[EndpointEvent]]:
        queue: asyncio.Queue[EndpointEvent] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
