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
    """The platform answered, and said no: `kind` is what it said (an HTTP status, a gRPC code);
    `retry_after_s`, when it said how long to wait before trying again."""

    def __init__(self, kind: str, retry_after_s: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


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


@dataclass
class Streamed:
    """One streamed answer, as its client saw it."""

    token_s: list[float]  # when each chunk with content arrived, in seconds after the request was sent
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int    # of the prompt's, reused from an earlier request (usage.prompt_tokens_details)


@dataclass
class StreamRun(Run):
    """A closed loop of streamed generations: latencies_s are the times to the first token."""

    tokens: int = 0                                       # completion tokens of the answered requests
    gaps_s: list[float] = field(default_factory=list)     # between consecutive chunks of one answer
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: int = 0

    def add(self, answer: Streamed, took_s: float) -> None:
        self.latencies_s.append(answer.token_s[0] if answer.token_s else took_s)
        self.gaps_s += [b - a for a, b in zip(answer.token_s, answer.token_s[1:])]
        self.tokens += answer.completion_tokens
        self.prompt_tokens.append(answer.prompt_tokens)
        self.cached_tokens += answer.cached_tokens

    @property
    def token_rate(self) -> float:
        """Completion tokens per second, all callers together."""
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def gap_p50_ms(self) -> float:
        return float(np.percentile(self.gaps_s, 50) * 1000) if self.gaps_s else float("nan")

    @property
    def refused_share(self) -> float:
        return sum(self.refused.values()) / self.requests if self.requests else 0.0


async def stream_loop(call: Callable[[], Awaitable[Streamed]], *, concurrency: int, duration_s: float,
                      warmup: int = 1) -> StreamRun:
    """`concurrency` callers of streamed generations, each sending its next request when its last is
    answered, after `warmup` requests one at a time (unmeasured). A refused caller waits what the
    answer's Retry-After said (1 s where it said nothing) before its next request, as a client that
    honours it does; never past the end of the measurement, which would only add idle time to it."""
    spare = StreamRun()
    for _ in range(warmup):
        await _streamed(call, spare, float("inf"))
    run = StreamRun()
    began = time.perf_counter()
    deadline = began + duration_s

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await _streamed(call, run, deadline)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - began
    return run


async def _streamed(call: Callable[[], Awaitable[Streamed]], run: StreamRun, deadline: float) -> None:
    began = time.perf_counter()
    try:
        answer = await call()
    except Refused as exc:
        run.refused[exc.kind] += 1
        wait = 1.0 if exc.retry_after_s is None else exc.retry_after_s
        await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
        return
    except Exception as exc:  # noqa: BLE001 - counted, shown in the table; the load goes on
        run.failed[type(exc).__name__] += 1
        return
    run.add(answer, time.perf_counter() - began)
