"""What happened to each inference request, handed off without delaying it.

Every outcome goes into a short in-memory history. Those of requests whose prompt an
experiment chose are also appended to a journal file before the response is done (one
write of ~200 bytes), and a background task delivers them in batches: over gRPC to the
experiment service's RecordOutcomes, or to the Redis stream when LLMOPS_REDIS_URL is set.
Only a delivered batch is acknowledged in the journal, so an outage of the experiment
service or Redis, or a restart of the router (kill -9 included), loses nothing: what was
not acknowledged is sent again, and the experiment service counts each request id once.
The journal is bounded (MAX_PENDING outcomes); beyond it outcomes are dropped and counted."""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import itertools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis.asyncio as redis
import structlog
from prometheus_client import Counter, Gauge
from pydantic import SecretStr

from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from shared.errors import STATUS_TABLE
from shared.outcome_stream import FIELD, MAX_ENTRIES, STREAM

from .watch import internal_call_metadata

log = structlog.get_logger()
DROPPED = Counter("llmops_outcomes_dropped_total", "Experiment outcomes dropped because the journal was full.")
DELIVERED = Counter("llmops_outcomes_delivered_total", "Experiment outcomes handed to the experiment service.")
FAILED_DELIVERIES = Counter("llmops_outcome_delivery_failures_total", "Batches of outcomes that could not be "
                                                                      "delivered (retried).")
PENDING = Gauge("llmops_outcomes_pending", "Experiment outcomes journaled and not yet delivered.")

MAX_PENDING = 100_000  # about 20 MB of journal: minutes of full traffic with the experiment service away
BATCH = 500
FLUSH_S = 0.2  # how long outcomes gather into one batch
COMPACT_BYTES = 1 << 20  # once everything is delivered, a journal longer than this starts over


def observes_variant(code: str) -> bool:
    """Whether a request that ended with this gRPC code (its name; "OK") is an observation of the variant
    that chose its prompt: a success, or a failure of the platform or the model (what the status table
    answers with a 5xx). What the caller caused (bad input, not found, denied, its rate limit, its
    cancellation) says nothing about the variant, and counted it would let any caller sink one: in
    trusted-headers mode a caller picks an X-User-Id that lands on the variant it wants to fail."""
    return code == "OK" or STATUS_TABLE[grpc.StatusCode[code]][0] >= 500


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
    error: str = ""  # the gRPC code's name when the request failed
    experiment_id: str = ""  # set only when the outcome counts for the experiment (observes_variant)
    variant: str = ""
    template_id: str = ""
    at: float = 0.0  # Unix seconds

    def to_proto(self) -> experiment_pb2.Outcome:
        message = experiment_pb2.Outcome(
            request_id=self.request_id, experiment_id=self.experiment_id, variant=self.variant,
            template_id=self.template_id, endpoint=self.endpoint, user_id=self.user, latency_ms=self.latency_ms,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, error=bool(self.error))
        message.created_at.FromNanoseconds(int((self.at or time.time()) * 1e9))
        return message


class OutcomeJournal:
    """An append-only file of outcomes (one base64 line each) and the offset up to which they
    were delivered (a second file, replaced atomically). One router process per journal."""

    def __init__(self, path: Path, *, max_pending: int = MAX_PENDING) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path, self._cursor_path = path, path.with_suffix(".delivered")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise RuntimeError(f"{path} is in use by another router process") from exc
        self._max = max_pending
        self._pending: deque[tuple[bytes, int]] = deque()  # (serialized outcome, journal offset after it)
        self._delivered = self._recover()
        PENDING.set(len(self._pending))

    def _recover(self) -> int:
        """Load what was journaled after the delivered offset; cut a line a crash left half-written."""
        size = os.fstat(self._fd).st_size
        try:
            delivered = int(self._cursor_path.read_text())
        except (OSError, ValueError):
            delivered = 0
        if not 0 <= delivered <= size:  # compacted after the cursor was written
            delivered = 0
        with open(self._path, "rb") as f:
            f.seek(delivered)
            offset = delivered
            for line in f:
                if not line.endswith(b"\n"):
                    os.ftruncate(self._fd, offset)
                    break
                offset += len(line)
                try:
                    self._pending.append((base64.b64decode(line[:-1], validate=True), offset))
                except (binascii.Error, ValueError):
                    log.warning("skipping an unreadable outcome in the journal", path=str(self._path))
        if self._pending:
            log.info("outcomes from before the restart will be delivered", count=len(self._pending))
        return delivered

    def append(self, serialized: bytes) -> bool:
        if len(self._pending) >= self._max:
            return False
        line = base64.b64encode(serialized) + b"\n"
        os.write(self._fd, line)
        self._pending.append((serialized, os.lseek(self._fd, 0, os.SEEK_CUR)))  # O_APPEND: the end of the file
        PENDING.set(len(self._pending))
        return True

    def pending(self, limit: int) -> list[bytes]:
        return [item for item, _ in itertools.islice(self._pending, limit)]

    def acknowledge(self, count: int) -> None:
        """The first `count` pending outcomes were delivered."""
        end = self._delivered
        for _ in range(count):
            _, end = self._pending.popleft()
        if not self._pending and end >= COMPACT_BYTES:
            os.ftruncate(self._fd, 0)
            end = 0
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(str(end))
        os.replace(tmp, self._cursor_path)
        self._delivered = end
        PENDING.set(len(self._pending))

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        os.close(self._fd)


Delivery = Callable[[list[bytes]], Awaitable[None]]


def grpc_delivery(address: str, service_token: SecretStr | None) -> tuple[Delivery, Callable[[], Awaitable[None]]]:
    """Deliver to the experiment service's RecordOutcomes (an internal method); and a closer."""
    channel = grpc.aio.insecure_channel(address)
    stub = experiment_pb2_grpc.ExperimentServiceStub(channel)
    metadata = internal_call_metadata(service_token)

    async def deliver(batch: list[bytes]) -> None:
        outcomes = [experiment_pb2.Outcome.FromString(item) for item in batch]
        await stub.RecordOutcomes(experiment_pb2.RecordOutcomesRequest(outcomes=outcomes), metadata=metadata,
                                  timeout=10)

    return deliver, channel.close


def redis_delivery(url: str, stream: str = STREAM) -> tuple[Delivery, Callable[[], Awaitable[None]]]:
    """Deliver to the outcome stream, which the experiment service reads as a consumer group."""
    client = redis.from_url(url)

    async def deliver(batch: list[bytes]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for item in batch:
                pipe.xadd(stream, {FIELD: item}, maxlen=MAX_ENTRIES, approximate=True)
            await pipe.execute()

    return deliver, client.aclose


class OutcomeSink:
    def __init__(self, journal: OutcomeJournal | None = None, deliver: Delivery | None = None,
                 close_delivery: Callable[[], Awaitable[None]] | None = None, *, history: int = 1000) -> None:
        self.recent: deque[Outcome] = deque(maxlen=history)
        self._journal, self._deliver, self._close_delivery = journal, deliver, close_delivery
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._journal is not None and self._deliver is not None:
            self._task = asyncio.create_task(self._deliver_forever(), name="outcome-delivery")

    def record(self, outcome: Outcome) -> None:
        self.recent.append(outcome)
        if outcome.experiment_id and self._journal is not None:
            if not self._journal.append(outcome.to_proto().SerializeToString()):
                DROPPED.inc()
            self._wake.set()

    def pending(self) -> int:
        return len(self._journal) if self._journal is not None else 0

    async def _deliver_forever(self) -> None:
        backoff = FLUSH_S
        while True:
            batch = self._journal.pending(BATCH)
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(FLUSH_S)  # let a batch gather
                continue
            try:
                await self._deliver(batch)
            except Exception as exc:  # noqa: BLE001 - any failure: keep them journaled and try again
                FAILED_DELIVERIES.inc()
                log.warning("outcomes not delivered; retrying", pending=len(self._journal), error=str(exc)[:200],
                            retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._journal.acknowledge(len(batch))
            DELIVERED.inc(len(batch))
            backoff = FLUSH_S

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._close_delivery is not None:
            await self._close_delivery()
        if self._journal is not None:
            self._journal.close()
