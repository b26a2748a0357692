"""The background half of the deployment service: one controller per endpoint
converges it to its desired revision through the runtime, and the health
monitor records what the runtime sees afterwards (a replica died, came back,
scaled). Both reach the service only through EndpointStore, and neither dies
of an error: a failed round is logged and retried with backoff."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from dataclasses import dataclass
from typing import Protocol

import structlog

from shared.errors import NotFound

from .domain import Endpoint, EndpointStatus
from .runtimes.base import Health, RuntimeFailure, RuntimeStatus, ServingRuntime, ServingSpec

log = structlog.get_logger()

HEALTH_TO_STATUS = {
    Health.DEPLOYING: EndpointStatus.DEPLOYING,
    Health.HEALTHY: EndpointStatus.HEALTHY,
    Health.DEGRADED: EndpointStatus.DEGRADED,
    Health.FAILED: EndpointStatus.FAILED,
}


class EndpointStore(Protocol):
    """What the controllers need of the deployment service."""

    async def get(self, *, endpoint_id: uuid.UUID) -> Endpoint: ...

    async def live_endpoints(self) -> list[Endpoint]: ...

    async def record_status(self, endpoint_id: uuid.UUID, *, expected_revision: int, status: EndpointStatus | None,
                            reason: str, runtime: RuntimeStatus, applied: int | None = None) -> bool:
        """Store what the runtime reports, unless a newer mutation got there first. True if it changed."""

    def publish(self, endpoint_id: uuid.UUID) -> None:
        """Tell WatchEndpoints subscribers that the endpoint changed."""


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 30.0

    def next(self, current: float) -> float:
        return self.initial_s if current <= 0 else min(current * 2, self.maximum_s)


def serving_spec(endpoint: Endpoint) -> ServingSpec:
    config = endpoint.config
    return ServingSpec(
        endpoint_id=str(endpoint.id), name=endpoint.name, environment=endpoint.environment, route=endpoint.route,
        revision=endpoint.revision, model=config.model, min_replicas=config.min_replicas,
        max_replicas=config.max_replicas, cpu_target=config.cpu_target)


class EndpointController:
    """Converges one endpoint to its desired revision; one apply at a time, in order."""

    def __init__(self, store: EndpointStore, runtime: ServingRuntime, endpoint_id: uuid.UUID,
                 backoff: Backoff = Backoff()) -> None:
        self._store, self._runtime, self._id, self._backoff = store, runtime, endpoint_id, backoff
        self._wake = asyncio.Event()
        # A context of its own: created in the call that deployed the endpoint, it would otherwise log every
        # later round with that call's request id and user.
        self._task = asyncio.create_task(self._run(), name=f"controller-{endpoint_id}", context=contextvars.Context())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if not await self._converge():
                    return  # deleted
                delay = 0.0
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a database or runtime hiccup must not strand the endpoint
                delay = self._backoff.next(delay)
                log.exception("controller round failed; retrying", endpoint=str(self._id), retry_in_s=delay)
                await asyncio.sleep(delay)
                self._wake.set()

    async def _converge(self) -> bool:
        """One round; False once the endpoint is gone."""
        try:
            endpoint = await self._store.get(endpoint_id=self._id)
        except NotFound:
            return False
        if endpoint.applied_revision == endpoint.revision:
            return True
        reason = ""
        try:
            await self._runtime.apply(serving_spec(endpoint))
            applied: int | None = endpoint.revision
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a runtime bug shows as failed, like a bad artifact
            applied, reason = None, f"revision {endpoint.revision} failed: {exc}"
            log.warning("apply failed", endpoint=str(self._id), revision=endpoint.revision, error=str(exc),
                        exc_info=not isinstance(exc, RuntimeFailure))
        runtime = await self._runtime.status(str(self._id))
        status = HEALTH_TO_STATUS[runtime.health] if applied else (
            EndpointStatus.FAILED if runtime.ready_replicas == 0 else EndpointStatus.DEGRADED)
        if await self._store.record_status(self._id, expected_revision=endpoint.revision, status=status,
                                           reason=reason or runtime.reason, runtime=runtime, applied=applied):
            self._store.publish(self._id)
        return True


class Controllers:
    """The controllers of the live endpoints, created on first use."""

    def __init__(self, store: EndpointStore, runtime: ServingRuntime) -> None:
        self._store, self._runtime = store, runtime
        self._controllers: dict[uuid.UUID, EndpointController] = {}

    def wake(self, endpoint_id: uuid.UUID) -> None:
        if endpoint_id not in self._controllers:
            self._controllers[endpoint_id] = EndpointController(self._store, self._runtime, endpoint_id)
        self._controllers[endpoint_id].wake()

    async def retire(self, endpoint_id: uuid.UUID) -> None:
        """Stop converging (an apply in flight is cancelled) and remove every replica."""
        controller = self._controllers.pop(endpoint_id, None)
        if controller is not None:
            await controller.stop()
        await self._runtime.remove(str(endpoint_id))

    async def close(self) -> None:
        for controller in list(self._controllers.values()):
            await controller.stop()
        self._controllers.clear()


class HealthMonitor:
    """Records health and replica changes of endpoints whose rollout is done (a rolling-out
    endpoint is reported by its controller)."""

    def __init__(self, store: EndpointStore, runtime: ServingRuntime, interval_s: float) -> None:
        self._store, self._runtime, self._interval = store, runtime, interval_s
        self._last_replicas: dict[uuid.UUID, tuple] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="endpoint-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep monitoring
                log.exception("endpoint monitor failed")

    async def check(self) -> None:
        live = await self._store.live_endpoints()
        # Only live endpoints are remembered: a deleted one leaves no trace here.
        self._last_replicas = {k: v for k, v in self._last_replicas.items() if k in {e.id for e in live}}
        for endpoint in live:
            if endpoint.applied_revision != endpoint.revision:
                continue
            status = await self._runtime.status(str(endpoint.id))
            changed = await self._store.record_status(
                endpoint.id, expected_revision=endpoint.revision, status=HEALTH_TO_STATUS[status.health],
                reason=status.reason, runtime=status)
            previous = self._last_replicas.get(endpoint.id)
            self._last_replicas[endpoint.id] = status.replicas
            if changed or (previous is not None and previous != status.replicas):
                self._store.publish(endpoint.id)
