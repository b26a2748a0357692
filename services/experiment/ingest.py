"""Outcomes from the Redis stream (shared.outcome_stream), as one consumer group: an entry
is acknowledged and deleted only after its outcome is stored, so an experiment service
killed mid-batch reads it again after its restart (its own pending entries first, and
entries another consumer left pending for long are claimed); storing is idempotent by
request id, so a re-read entry is never counted twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as redis
import structlog
from google.protobuf.message import DecodeError

from llmops.v1 import experiment_pb2 as pb
from shared.outcome_stream import FIELD, GROUP, STREAM

from .converters import outcome_record
from .domain import OutcomeRecord

log = structlog.get_logger()
BATCH = 500
CLAIM_IDLE_MS = 30_000  # a consumer that held entries this long without acknowledging them is gone
CLAIM_EVERY_S = 10.0


class RedisOutcomeConsumer:
    def __init__(self, url: str, *, consumer: str, ingest: Callable[[list[OutcomeRecord]], int],
                 stream: str = STREAM, claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self._redis = redis.from_url(url)
        self._consumer = consumer
        self._ingest = ingest
        self._stream, self._claim_idle_ms = stream, claim_idle_ms

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._ensure_group()
                while await self._read("0"):  # what this consumer read before a restart and never acknowledged
                    pass
                claimed_at = 0.0
                while True:
                    now = asyncio.get_running_loop().time()
                    if now - claimed_at > CLAIM_EVERY_S:
                        await self._claim_stale()
                        claimed_at = now
                    await self._read(">")
                    backoff = 0.2
            except (redis.RedisError, OSError) as exc:
                log.warning("outcome stream unreachable; retrying", error=str(exc), retry_in_s=backoff)
            except Exception:  # noqa: BLE001 - a consumer that dies would leave every outcome unread
                log.exception("outcome stream consumer failed; retrying", retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, start: str) -> int:
        """One batch from `start` ("0": this consumer's pending entries, ">": new ones); its size."""
        answer = await self._redis.xreadgroup(GROUP, self._consumer, {self._stream: start}, count=BATCH,
                                              block=1000 if start == ">" else None)
        entries = answer[0][1] if answer else []
        await self._store(entries)
        return len(entries)

    async def _claim_stale(self) -> None:
        _, entries, *_ = await self._redis.xautoclaim(self._stream, GROUP, self._consumer, min_idle_time=self._claim_idle_ms,
                                                      start_id="0-0", count=BATCH)
        await self._store(entries)

    async def _store(self, entries: list) -> None:
        if not entries:
            return
        records = []
        for _, fields in entries:
            try:
                record = outcome_record(pb.Outcome.FromString(fields.get(FIELD, b"")))
            except DecodeError:
                record = None
            if record is not None:
                records.append(record)
        if records:
            await asyncio.to_thread(self._ingest, records)
        ids = [entry_id for entry_id, _ in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(self._stream, GROUP, *ids)
            pipe.xdel(self._stream, *ids)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()
