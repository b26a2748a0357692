"""The serving Services' EndpointSlices, watched: where the router learns each ready pod.

Watched rather than listed on every status(): status() is asked per endpoint every
reconcile interval and on every route-table event, and a pod that stops being ready
must leave the router's table at once, not at the next round; a watch turns the
EndpointSlice controller's update into ``on_change`` within one event, and costs one
open request per namespace instead of one list per endpoint and round.

One ``EndpointSliceWatch`` per serving namespace lists the namespace's EndpointSlices,
then watches from the list's resourceVersion, in a daemon thread (the official client
blocks). The watch ends after ``timeout_s`` (the API server closes it), on an error
(a 410 Gone included) or a dropped connection; each time it lists again after
``retry_s`` and goes on, so the cache never misses a change for long. Until the first
list has answered, ``slices`` returns None and the runtime lists itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

log = structlog.get_logger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVING_PREFIX = "serving-"


def service_of(endpoint_slice: Mapping[str, Any]) -> str:
    return ((endpoint_slice.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL, "")


def slices_of(slices: Iterable[Mapping[str, Any]], service: str) -> list[Mapping[str, Any]]:
    return [s for s in slices if service_of(s) == service]


def list_slices(discovery: k8s.DiscoveryV1Api, namespace: str, *, label_selector: str = "",
                timeout_s: float = 30.0) -> dict[str, Any]:
    """One list of EndpointSlices (JSON): items and metadata.resourceVersion."""
    response = discovery.list_namespaced_endpoint_slice(namespace, label_selector=label_selector,
                                                        _preload_content=False, _request_timeout=timeout_s)
    return json.loads(response.data or b"{}")


class EndpointSliceWatch:
    """The serving-* EndpointSlices of one namespace; ``on_change(service)`` runs in the watch thread
    whenever one of that Service's slices is added, changed or deleted."""

    def __init__(self, discovery: k8s.DiscoveryV1Api, namespace: str, on_change: Callable[[str], None], *,
                 timeout_s: float = 300.0, retry_s: float = 2.0) -> None:
        self._discovery, self._namespace, self._on_change = discovery, namespace, on_change
        self._timeout_s, self._retry_s = timeout_s, retry_s
        self._slices: dict[str, Mapping[str, Any]] = {}  # slice name -> slice
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._watch = k8s_watch.Watch()
        self._thread = threading.Thread(target=self._run, name=f"endpointslices-{namespace}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Blocking: ends the open watch request (Watch.stop shuts its socket down) and the thread."""
        self._stopped.set()
        self._watch.stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def slices(self, service: str) -> list[Mapping[str, Any]] | None:
        """The Service's slices as last seen; None before the first list answered."""
        if not self._synced.is_set():
            return None
        with self._lock:
            return slices_of(self._slices.values(), service)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._list_then_watch()
            except Exception as exc:  # noqa: BLE001 - an API hiccup: list again, never stop watching
                if not self._stopped.is_set():
                    log.warning("kubernetes.endpointslice_watch_failed", namespace=self._namespace, error=str(exc))
            self._stopped.wait(self._retry_s)

    def _list_then_watch(self) -> None:
        listed = list_slices(self._discovery, self._namespace)
        fresh = {s["metadata"]["name"]: s for s in listed.get("items") or []
                 if service_of(s).startswith(SERVING_PREFIX)}
        with self._lock:
            old, self._slices = self._slices, fresh
        self._synced.set()
        changed = {service_of(s) for name, s in (old | fresh).items() if old.get(name) != fresh.get(name)}
        for service in sorted(changed):
            self._on_change(service)
        events = self._watch.stream(
            self._discovery.list_namespaced_endpoint_slice, self._namespace, deserialize=False,
            resource_version=(listed.get("metadata") or {}).get("resourceVersion"), allow_watch_bookmarks=True,
            timeout_seconds=int(self._timeout_s), _request_timeout=(10, self._timeout_s + 30))
        for event in events:
            if self._stopped.is_set():
                return
            self._apply(event)

    def _apply(self, event: Mapping[str, Any]) -> None:
        endpoint_slice = event.get("object") or {}
        service = service_of(endpoint_slice)
        if event.get("type") not in ("ADDED", "MODIFIED", "DELETED") or not service.startswith(SERVING_PREFIX):
            return  # BOOKMARK, or another Service's slice
        name = endpoint_slice["metadata"]["name"]
        with self._lock:
            before = self._slices.get(name)
            if event["type"] == "DELETED":
                self._slices.pop(name, None)
            else:
                self._slices[name] = endpoint_slice
            changed = before != self._slices.get(name)
        if changed:
            self._on_change(service)
