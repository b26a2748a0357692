"""Leader election over a coordination.k8s.io/v1 Lease: one deployment service replica acts.

With the kubernetes runtime the deployment service may run several replicas, but an
endpoint's controller must act once: two replicas applying the same endpoint would race
each other's rollouts. The holder of the Lease (``settings.leader_lease_name`` in the
pod's namespace; identity = the pod's name) leads; the others wait and take over once
it has not been renewed for ``leader_lease_duration_s``.

Why not ``kubernetes.leaderelection`` (client 37.0.2 ships it, with a LeaseLock): it
blocks a thread in sleep loops, runs the leader's work in yet another thread, judges
expiry by the wall clock and has no way to stop or to release the lease. This is the
same algorithm as client-go's, as an asyncio task on the typed CoordinationV1Api:

* expiry is judged by this process's monotonic clock from when it last saw the
  lease record change, never by comparing another machine's renewTime with ours;
* every write is a replace carrying the resourceVersion that was read, so of two
  candidates that saw the same expired lease only one succeeds; the other's 409
  Conflict is "not leading", never an error;
* a leader that could not renew for ``leader_renew_deadline_s`` (shorter than the
  lease duration, checked by the settings) stops acting before anyone may take over;
* close() releases a held lease (holder cleared), so a rolling update hands over at
  once instead of after the lease duration.

Listeners (``lead()`` / ``follow()``) hear every change of leadership, in order.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import urllib3
from kubernetes import client as k8s

log = structlog.get_logger(__name__)
RELEASE_ATTEMPTS = 3  # reads and writes of a release that meets a renewal still in flight


class LeadershipListener(Protocol):
    async def lead(self) -> None:
        """This process leads now: start acting."""

    async def follow(self) -> None:
        """This process no longer leads (or never did): stop acting."""


@dataclass(frozen=True)
class LeaseTimings:
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


def _micro_time(at: datetime.datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, coordination: k8s.CoordinationV1Api, *, name: str, namespace: str, identity: str,
                 timings: LeaseTimings = LeaseTimings(), clock: Callable[[], float] = time.monotonic) -> None:
        if not identity:
            raise ValueError("leader election needs an identity: set LLMOPS_POD_NAME (the downward API's "
                             "metadata.name)")
        self._api, self._name, self._namespace, self.identity = coordination, name, namespace, identity
        self._timings, self._clock = timings, clock
        self._listeners: list[LeadershipListener] = []
        self._observed: dict[str, Any] | None = None  # the lease spec last read or written
        self._observed_at = 0.0  # when (our clock) it last changed
        self._resource_version: str | None = None
        self._renewed_at = 0.0
        self._task: asyncio.Task | None = None
        self.leading = False

    # -- lifecycle

    async def add_listener(self, listener: LeadershipListener) -> None:
        """Hear leadership changes from now on; told the current state at once."""
        self._listeners.append(listener)
        await (listener.lead() if self.leading else listener.follow())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def close(self) -> None:
        """Stop electing; a leader stops acting, then releases the lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.leading:
            await self._set_leading(False)
            await asyncio.to_thread(self._release)

    # -- one step each, the loop around them

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to hold the lease; True when this process holds it now."""
        try:
            held = await asyncio.to_thread(self._acquire_or_renew)
        except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:  # unreachable, timed out, refused
            log.warning("leader.lease_call_failed", lease=self._name, error=str(exc))
            return False
        if held:
            self._renewed_at = self._clock()
        return held

    async def _run(self) -> None:
        while True:
            if await self.try_acquire_or_renew():
                if not self.leading:
                    log.info("leader.acquired", lease=self._name, identity=self.identity, notice=True)
                    await self._set_leading(True)
            elif self.leading and self._clock() - self._renewed_at >= self._timings.renew_deadline_s:
                log.warning("leader.lost", lease=self._name, identity=self.identity)
                await self._set_leading(False)
            await asyncio.sleep(self._timings.retry_period_s)

    async def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        for listener in self._listeners:
            await (listener.lead() if leading else listener.follow())

    # -- the API calls (worker thread)

    def _read(self) -> dict[str, Any] | None:
        try:
            response = self._api.read_namespaced_lease(self._name, self._namespace, _preload_content=False,
                                                       _request_timeout=self._timings.retry_period_s)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(response.data)

    def _acquire_or_renew(self) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        lease = self._read()
        if lease is None:
            return self._write(self._spec(now, previous={}), resource_version=None)
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed, self._observed_at = spec, self._clock()
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self._timings.duration_s)
        if holder and holder != self.identity and self._clock() < self._observed_at + duration:
            return False  # held by another, and not expired as far as we have watched it
        return self._write(self._spec(now, previous=spec), resource_version=lease["metadata"].get("resourceVersion"))

    def _spec(self, now: datetime.datetime, *, previous: dict[str, Any]) -> dict[str, Any]:
        ours = previous.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self._timings.duration_s)),
            "acquireTime": previous.get("acquireTime") if ours else _micro_time(now),
            "renewTime": _micro_time(now),
            "leaseTransitions": int(previous.get("leaseTransitions") or 0) + (0 if ours or not previous else 1),
        }

    def _write(self, spec: dict[str, Any], *, resource_version: str | None) -> bool:
        """Create (resource_version None) or replace the lease with this spec; False on a 409."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self._name, "namespace": self._namespace}, "spec": spec}
        try:
            if resource_version is None:
                response = self._api.create_namespaced_lease(self._namespace, body, _preload_content=False,
                                                             _request_timeout=self._timings.retry_period_s)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                response = self._api.replace_namespaced_lease(self._name, self._namespace, body,
                                                              _preload_content=False,
                                                              _request_timeout=self._timings.retry_period_s)
        except k8s.ApiException as exc:
            if exc.status == 409:  # another candidate wrote first (AlreadyExists or a stale resourceVersion)
                return False
            raise
        written = json.loads(response.data)
        self._observed, self._observed_at = written.get("spec") or spec, self._clock()
        return True

    def _release(self) -> None:
        """Clear the holder, so the next candidate need not wait for the lease to expire. A renewal that
        close() cancelled may still be in flight in its worker thread and write first: the release then
        meets a 409 on a stale resourceVersion, and reads the lease again."""
        try:
            for _ in range(RELEASE_ATTEMPTS):
                lease = self._read()
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return
                released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1,
                            "renewTime": _micro_time(datetime.datetime.now(datetime.UTC))}
                if self._write(released, resource_version=lease["metadata"].get("resourceVersion")):
                    log.info("leader.released", lease=self._name, identity=self.identity)
                    return
            log.warning("leader.release_failed", lease=self._name, error=f"{RELEASE_ATTEMPTS} conflicts")
        except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:  # it then expires on its own
            log.warning("leader.release_failed", lease=self._name, error=str(exc))
