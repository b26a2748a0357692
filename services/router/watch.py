"""Following a control-plane watch forever: the route table and the experiments both come
from a server-streaming call that the router reopens, with backoff, whenever it ends or
fails, serving from what it last knew meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncio

import grpc
import structlog
from pydantic import SecretStr

from shared.identity import Identity, service_metadata

log = structlog.get_logger()
ROUTER_IDENTITY = Identity("svc-router", frozenset({"admin"}))
WATCH_BACKOFF_MAX_S = 1.0
# A fresh connection per attempt: channels to one address share a process-wide subchannel whose
# reconnect backoff (up to 2 minutes) would keep failing new channels fast after the service is back.
WATCH_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 200),
                         ("grpc.max_reconnect_backoff_ms", 1000)]


def internal_call_metadata(service_token: SecretStr | None) -> tuple[tuple[str, str], ...]:
    """For internal methods (the watches, RecordOutcomes): the router's identity and the service credential."""
    return ROUTER_IDENTITY.metadata() + service_metadata(service_token)


async def follow_watch(address: str, open_stream: Callable[[grpc.aio.Channel], AsyncIterator[Any]],
                       apply: Callable[[Any], None], *, what: str) -> None:
    """Apply every event of open_stream(channel) forever, reconnecting with backoff."""
    backoff = 0.2
    # A warning once per outage and its retries at info (a restart takes seconds, a retry comes each
    # second); none before the first connection, while the service it follows is still starting.
    state = "starting"  # then "up" (connected), "down" (lost)
    while True:
        channel = grpc.aio.insecure_channel(address, options=WATCH_CHANNEL_OPTIONS)
        try:
            async for event in open_stream(channel):
                if state == "down":
                    log.info(f"{what} watch resumed", notice=True)
                state = "up"
                apply(event)
                backoff = 0.2
        except grpc.aio.AioRpcError as exc:
            (log.warning if state == "up" else log.info)(f"{what} watch interrupted; serving from cache",
                                                         code=exc.code().name, retry_in_s=backoff)
            state = "down" if state == "up" else state
        except Exception:  # noqa: BLE001 - a watcher that dies leaves its cache stale forever
            log.exception(f"{what} watch failed; serving from cache", retry_in_s=backoff)
        finally:
            await channel.close()  # CancelledError (a BaseException) still propagates after this
        await asyncio.sleep(backoff)
        # At most 1 s: a restarted deployment service switches and drains replicas within seconds,
        # and a table that missed the switch would send work to replicas that are stopping.
        backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)
