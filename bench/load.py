"""One load generator for every scenario: asyncio workers calling an async function,
each request timed with perf_counter. Closed loop (N callers back to back) for latency
and throughput; open loop (arrivals at a fixed rate, whatever the answers do) for overload."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

Call = Callable[[], Awaitable[object]]


class Refused(Exception):
    """The platform answered, and said no: `kind` is what it said (an HTTP status, a gRPC code)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Run:
    """What one scenario's load produced."""

    latencies_s: list[float] = field(default_factory=list)  # of the answered requests
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)   # exceptions other than Refused, by type
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + sum(self.refused.values()) + sum(self.failed.values())

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0


async def _timed(call: Call, run: Run) -> None:
    began = time.perf_counter()
    try:
        await call()
    except Refused as exc:
        run.refused[exc.kind] += 1
        return
    except Exception as exc:  # noqa: BLE001 - counted, shown in the table; the load goes on
        run.failed[type(exc).__name__] += 1
        return
    run.latencies_s.append(time.perf_counter() - began)


async def closed_loop(call: Call, *, concurrency: int, duration_s: float, warmup_s: float = 0.5) -> Run:
    """`concurrency` callers, each sending its next request when the last one is answered."""
    await _for(call, min(concurrency, 4), warmup_s, Run())
    run = Run()
    began = time.perf_counter()
    await _for(call, concurrency, duration_s, run)
    run.wall_s = time.perf_counter() - began
    return run


async def _for(call: Call, concurrency: int, duration_s: float, run: Run) -> None:
    deadline = time.perf_counter() + duration_s

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await _timed(call, run)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def open_loop(call: Call, *, rate: float, duration_s: float) -> Run:
    """Requests start at `rate` per second for `duration_s`, answered or not (arrivals do not wait)."""
    run = Run()
    tasks = []
    began = time.perf_counter()
    for i in range(int(rate * duration_s)):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, run)))
    await asyncio.gather(*tasks)
    run.wall_s = time.perf_counter() - began
    return run


async def first_token_loop(call, *, concurrency: int, duration_s: float) -> tuple[Run, int]:  # noqa: ANN001
    """A closed loop of streamed generations: call(mark) calls mark() at its first token and returns
    the tokens it got. The latencies are times to the first token. One request first, unmeasured."""
    await call(lambda: None)
    run, tokens = Run(), 0
    deadline = time.perf_counter() + duration_s
    began = time.perf_counter()

    async def caller() -> None:
        nonlocal tokens
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            first: list[float] = []
            try:
                got = await call(lambda: first.append(time.perf_counter()))
            except Refused as exc:
                run.refused[exc.kind] += 1
                continue
            run.latencies_s.append((first[0] if first else time.perf_counter()) - start)
            tokens += got  # not `tokens += await ...`: that reads tokens before the await

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - began
    return run, tokens
