"""The Kubernetes serving runtime: one endpoint revision = seven objects, server-side applied.

This module does the I/O with the official ``kubernetes`` client; what is sent
comes from k8s_manifests (pure builders), what is read back is judged by
k8s_status (pure readers), and the names both share live in k8s_names.

Applying. Every object goes through the typed API's ``patch_namespaced_*`` with
``_content_type="application/apply-patch+yaml"``, ``field_manager="llmops-deployment"``
and ``force=True`` (the client JSON-encodes the dict body; JSON is YAML): a real
API server creates the object on the first apply and afterwards owns exactly the
applied fields for this manager, so a re-apply (a rollback included) removes what
the previous revision set and this one does not. Responses are read as raw JSON
(``_preload_content=False``) rather than deserialized into the client's models.

Replicas. apply() reads the Deployment first: a new one is created with
spec.replicas = minReplicas; an existing one is applied without spec.replicas, which
stays the HorizontalPodAutoscaler's. While this field manager still owns the field
(it created the Deployment, or an older version of this runtime applied it every
time), it is first handed over at its current value to ``llmops-handover-to-hpa``,
without force: a conflict there means the HPA took it meanwhile, which is the goal.

Waiting. ``KubernetesRuntime(..., wait_for_rollout=True)`` (the default, what the
ServingRuntime protocol asks for) makes apply() poll the Deployment every
``poll_interval_s`` until the new generation is observed and fully rolled out
(updatedReplicas == availableReplicas == replicas, no old pods left), raising
RuntimeFailure on Progressing=False / ReplicaFailure or after
``settings.triton_ready_timeout_s``. With ``wait_for_rollout=False`` apply()
returns once the seven objects are applied and the caller polls status(), which
says deploying until the Deployment's status says otherwise.

Replicas the router calls. status() reports one replica per ready pod (podIP:8001),
read from the headless Service's EndpointSlices, which start() watches in every
serving namespace (k8s_slices: why a watch); a change of them calls ``on_change``
with the endpoint id, so the router's table follows the pods as they come and go.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from shared.settings import Settings

from .base import Health, RuntimeFailure, RuntimeStatus, ServingSpec
from .k8s_manifests import build_manifests, build_replicas_handover
from .k8s_names import (
    FIELD_MANAGER, HANDOVER_FIELD_MANAGER, candidate_namespaces, deployment_name, gateway_service_name, hpa_name,
    ingress_name, namespace_for, network_policy_name, replica_key_secret_name, service_name)
from .k8s_slices import SERVICE_NAME_LABEL, SERVING_PREFIX, EndpointSliceWatch, list_slices, slices_of
from .k8s_status import (
    applies_replicas, assess_deployment, desired_replicas, observed_generation, revision_of, rolled_out,
    slice_replicas)

log = structlog.get_logger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"

Call = Callable[..., Any]


# The typed API of each kind an endpoint is made of, and its resource's name in the API's methods
# (patch_namespaced_<resource>, read_..., delete_...).
_TYPED_APIS: dict[str, tuple[type, str]] = {
    "Deployment": (k8s.AppsV1Api, "deployment"),
    "Service": (k8s.CoreV1Api, "service"),
    "HorizontalPodAutoscaler": (k8s.AutoscalingV2Api, "horizontal_pod_autoscaler"),
    "Ingress": (k8s.NetworkingV1Api, "ingress"),
    "NetworkPolicy": (k8s.NetworkingV1Api, "network_policy"),
    "Secret": (k8s.CoreV1Api, "secret"),
}


def _api_error(exc: k8s.ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def kubernetes_api_client(settings: Settings) -> k8s.ApiClient:
    """A client from ``settings.kubernetes_kubeconfig``, or the in-cluster service account when that is empty."""
    if settings.kubernetes_kubeconfig:
        return k8s_config.new_client_from_config(config_file=settings.kubernetes_kubeconfig, persist_config=False)
    configuration = k8s.Configuration()
    k8s_config.load_incluster_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


class KubernetesRuntime:
    """ServingRuntime on a Kubernetes cluster (see the module docstring).

    api_client: a configured ``kubernetes.client.ApiClient``; when None, one is made
    on start() (or first use) from ``settings.kubernetes_kubeconfig``, or the
    in-cluster service account when that is empty, and closed by close().
    """

    def __init__(self, settings: Settings, api_client: k8s.ApiClient | None = None, *,
                 wait_for_rollout: bool = True, poll_interval_s: float = 2.0) -> None:
        self._settings = settings
        self._api_client = api_client
        self._owns_client = api_client is None
        self._wait = wait_for_rollout
        self._poll_interval_s = poll_interval_s
        self._namespaces: dict[str, str] = {}  # endpoint id -> namespace, learnt on apply/status
        self._watches: dict[str, EndpointSliceWatch] = {}  # namespace -> its EndpointSlices
        self.on_change: Callable[[str], None] | None = None

    # -- protocol

    async def start(self) -> None:
        """Nothing to adopt: the cluster holds the state. Loads the client config now so a
        bad kubeconfig fails at start-up rather than at the first deploy, and starts watching
        the EndpointSlices of every serving namespace."""
        discovery = k8s.DiscoveryV1Api(await asyncio.to_thread(self._client))
        loop = asyncio.get_running_loop()

        def changed(service: str) -> None:  # in a watch thread
            loop.call_soon_threadsafe(self._replicas_changed, service.removeprefix(SERVING_PREFIX))

        for namespace in candidate_namespaces(self._settings):
            if namespace not in self._watches:
                self._watches[namespace] = EndpointSliceWatch(discovery, namespace, changed)
                self._watches[namespace].start()

    async def apply(self, spec: ServingSpec) -> None:
        namespace = namespace_for(self._settings, spec.environment)
        try:
            # Refuses what no cluster can serve (file://, a bad endpoint id or route) before any request.
            build_manifests(spec, self._settings, deployment_exists=True)
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from exc
        deployment = await asyncio.to_thread(self._apply_revision, spec, namespace)
        self._namespaces[spec.endpoint_id] = namespace
        generation = int((deployment.get("metadata") or {}).get("generation") or 0)
        log.info("kubernetes.applied", endpoint_id=spec.endpoint_id, revision=spec.revision,
                 namespace=namespace, generation=generation)
        if self._wait:
            await self._wait_rolled_out(spec, namespace, generation)

    async def status(self, endpoint_id: str) -> RuntimeStatus:
        found = await asyncio.to_thread(self._find_deployment, endpoint_id)
        if found is None:
            namespaces = ", ".join(self._namespaces_of(endpoint_id))
            return RuntimeStatus(health=Health.FAILED, desired_replicas=0, ready_replicas=0,
                                 reason=f"Deployment {deployment_name(endpoint_id)} not found in {namespaces}")
        namespace, deployment = found
        slices = await asyncio.to_thread(self._endpoint_slices, namespace, service_name(endpoint_id))
        return assess_deployment(deployment, slice_replicas(slices, revision_of(deployment)))

    async def remove(self, endpoint_id: str) -> None:
        await asyncio.to_thread(self._delete_all, endpoint_id)
        self._namespaces.pop(endpoint_id, None)
        log.info("kubernetes.removed", endpoint_id=endpoint_id)

    async def close(self) -> None:
        watches, self._watches = list(self._watches.values()), {}
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in watches))
        if self._owns_client and self._api_client is not None:
            client, self._api_client = self._api_client, None
            await asyncio.to_thread(client.close)

    # -- blocking helpers (run in a worker thread)

    def _replicas_changed(self, endpoint_id: str) -> None:
        if self.on_change is not None:
            self.on_change(endpoint_id)

    def _client(self) -> k8s.ApiClient:
        if self._api_client is None:
            self._api_client = kubernetes_api_client(self._settings)
        return self._api_client

    def _endpoint_slices(self, namespace: str, service: str) -> list[Mapping[str, Any]]:
        """The Service's EndpointSlices: the watch's, or (not watching or not synced yet) listed now."""
        watch = self._watches.get(namespace)
        watched = watch.slices(service) if watch is not None else None
        if watched is not None:
            return watched
        try:
            listed = list_slices(k8s.DiscoveryV1Api(self._client()), namespace,
                                 label_selector=f"{SERVICE_NAME_LABEL}={service}")
        except k8s.ApiException as exc:
            raise RuntimeFailure(f"listing the EndpointSlices of {namespace}/{service} failed: "
                                 f"{_api_error(exc)}") from exc
        return slices_of(listed.get("items") or [], service)

    def _operations(self, kind: str) -> tuple[Call, Call, Call]:
        """(patch, read, delete) of the typed API for one of the kinds an endpoint is made of."""
        if kind not in _TYPED_APIS:
            raise ValueError(f"unsupported kind {kind}")
        api_class, resource = _TYPED_APIS[kind]
        api = api_class(self._client())
        return (getattr(api, f"patch_namespaced_{resource}"), getattr(api, f"read_namespaced_{resource}"),
                getattr(api, f"delete_namespaced_{resource}"))

    def _apply_revision(self, spec: ServingSpec, namespace: str) -> dict[str, Any]:
        """Server-side apply the seven objects (replicas as the module docstring says); the applied Deployment."""
        current = self._read_deployment(namespace, deployment_name(spec.endpoint_id))
        if current is not None and applies_replicas(current, FIELD_MANAGER):
            self._hand_over_replicas(spec.endpoint_id, namespace, desired_replicas(current))
        deployment: dict[str, Any] = {}
        for manifest in build_manifests(spec, self._settings, deployment_exists=current is not None):
            try:
                applied = self._apply_object(manifest)
            except k8s.ApiException as exc:
                meta = manifest["metadata"]
                raise RuntimeFailure(f"server-side apply of {manifest['kind']} {meta['namespace']}/{meta['name']} "
                                     f"failed: {_api_error(exc)}") from exc
            if manifest["kind"] == "Deployment":
                deployment = applied
        return deployment

    def _apply_object(self, manifest: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._server_side_apply(manifest, FIELD_MANAGER, force=True)
        except k8s.ApiException as exc:
            if not self._recreated_for_cluster_ip(manifest, exc):
                raise
        return self._server_side_apply(manifest, FIELD_MANAGER, force=True)

    def _recreated_for_cluster_ip(self, manifest: dict[str, Any], exc: k8s.ApiException) -> bool:
        """A Service's clusterIP never changes once set, so the serving Service an earlier version of this
        runtime made (ClusterIP) refuses to become headless: 422, field spec.clusterIPs[0]. Delete it, and
        the next apply creates it anew (the router reads the pods' addresses, never the Service's, so
        nothing that routes is lost meanwhile). True when deleted."""
        if manifest["kind"] != "Service" or exc.status != 422:
            return False
        try:
            causes = (json.loads(exc.body or "{}").get("details") or {}).get("causes") or []
        except (ValueError, AttributeError):
            return False
        if not any(str(c.get("field", "")).startswith("spec.clusterIP") for c in causes):
            return False  # refused for another reason: report it
        _, _, delete = self._operations("Service")
        meta = manifest["metadata"]
        delete(meta["name"], meta["namespace"], _preload_content=False)
        log.info("kubernetes.service_recreated", service=meta["name"], namespace=meta["namespace"],
                 cluster_ip=manifest["spec"].get("clusterIP"), reason=_api_error(exc))
        return True

    def _hand_over_replicas(self, endpoint_id: str, namespace: str, replicas: int) -> None:
        handover = build_replicas_handover(endpoint_id, namespace, replicas)
        try:
            self._server_side_apply(handover, HANDOVER_FIELD_MANAGER, force=False)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise RuntimeFailure(f"handing spec.replicas of Deployment {namespace}/"
                                     f"{handover['metadata']['name']} over failed: {_api_error(exc)}") from exc
            # A conflict: another manager (the HPA) changed replicas since the read and owns them now.
            log.info("kubernetes.replicas_already_taken", endpoint_id=endpoint_id, reason=_api_error(exc))
        else:
            log.info("kubernetes.replicas_handed_over", endpoint_id=endpoint_id, replicas=replicas)

    def _server_side_apply(self, manifest: dict[str, Any], field_manager: str, *, force: bool) -> dict[str, Any]:
        patch, _, _ = self._operations(manifest["kind"])
        meta = manifest["metadata"]
        response = patch(meta["name"], meta["namespace"], manifest, field_manager=field_manager, force=force,
                         _content_type=APPLY_PATCH, _preload_content=False)
        return json.loads(response.data or b"{}")

    def _namespaces_of(self, endpoint_id: str) -> list[str]:
        known = self._namespaces.get(endpoint_id)
        others = [ns for ns in candidate_namespaces(self._settings) if ns != known]
        return [known, *others] if known else others

    def _read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        _, read, _ = self._operations("Deployment")
        try:
            return json.loads(read(name, namespace, _preload_content=False).data)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise RuntimeFailure(f"reading Deployment {namespace}/{name} failed: {_api_error(exc)}") from exc

    def _find_deployment(self, endpoint_id: str) -> tuple[str, dict[str, Any]] | None:
        name = deployment_name(endpoint_id)
        for namespace in self._namespaces_of(endpoint_id):
            deployment = self._read_deployment(namespace, name)
            if deployment is not None:
                self._namespaces[endpoint_id] = namespace
                return namespace, deployment
        return None

    def _delete_all(self, endpoint_id: str) -> None:
        objects = [("Ingress", ingress_name(endpoint_id)), ("Service", gateway_service_name(endpoint_id)),
                   ("HorizontalPodAutoscaler", hpa_name(endpoint_id)), ("Service", service_name(endpoint_id)),
                   ("Deployment", deployment_name(endpoint_id)),  # then what its pods needed
                   ("NetworkPolicy", network_policy_name(endpoint_id)),
                   ("Secret", replica_key_secret_name(endpoint_id))]
        for namespace in self._namespaces_of(endpoint_id):
            for kind, name in objects:
                _, _, delete = self._operations(kind)
                try:
                    delete(name, namespace, propagation_policy="Background", _preload_content=False)
                except k8s.ApiException as exc:
                    if exc.status != 404:
                        raise RuntimeFailure(f"deleting {kind} {namespace}/{name} failed: "
                                             f"{_api_error(exc)}") from exc

    async def _wait_rolled_out(self, spec: ServingSpec, namespace: str, generation: int) -> None:
        name = deployment_name(spec.endpoint_id)
        timeout = self._settings.triton_ready_timeout_s
        deadline = time.monotonic() + timeout
        last = "no status yet"
        while True:
            deployment = await asyncio.to_thread(self._read_deployment, namespace, name)
            if deployment is None:
                raise RuntimeFailure(f"Deployment {namespace}/{name} disappeared during the rollout")
            state = assess_deployment(deployment)
            if observed_generation(deployment) >= generation:
                if state.health == Health.FAILED:
                    raise RuntimeFailure(f"revision {spec.revision} of {name} failed: {state.reason}")
                if rolled_out(deployment) and state.health == Health.HEALTHY:
                    log.info("kubernetes.rolled_out", endpoint_id=spec.endpoint_id, revision=spec.revision,
                             ready=state.ready_replicas, notice=True)
                    return
            last = state.reason
            if time.monotonic() >= deadline:
                raise RuntimeFailure(f"revision {spec.revision} of {name} not rolled out within {timeout:g}s: "
                                     f"{last}")
            await asyncio.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))
