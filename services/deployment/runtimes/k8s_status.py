"""Reading what the API returns (JSON): pure functions, no I/O.

``assess_deployment`` turns a Deployment and the replicas ``slice_replicas`` read
from its Service's EndpointSlices into the runtime's RuntimeStatus, ``rolled_out``
is `kubectl rollout status`'s test, and ``applies_replicas`` reads managedFields to
tell whether a field manager still owns spec.replicas through server-side apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .base import Health, ReplicaState, RuntimeStatus
from .k8s_names import ANNOTATION_REVISION, ANNOTATION_TRITON_MODEL

ADDRESS_TYPES = ("IPv4", "IPv6")  # FQDN slices name no pod


def _conditions(deployment: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (deployment.get("status") or {}).get("conditions") or []}


def _counts(deployment: Mapping[str, Any]) -> dict[str, int]:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = spec.get("replicas")
    return {
        "desired": 1 if desired is None else int(desired),
        "current": int(status.get("replicas") or 0),
        "updated": int(status.get("updatedReplicas") or 0),
        "ready": int(status.get("readyReplicas") or 0),
        "available": int(status.get("availableReplicas") or 0),
        "generation": int((deployment.get("metadata") or {}).get("generation") or 0),
        "observed": int(status.get("observedGeneration") or 0),
    }


def desired_replicas(deployment: Mapping[str, Any]) -> int:
    """spec.replicas, or the API's default of 1 when unset."""
    return _counts(deployment)["desired"]


def observed_generation(deployment: Mapping[str, Any]) -> int:
    return _counts(deployment)["observed"]


def rolled_out(deployment: Mapping[str, Any]) -> bool:
    """kubectl rollout status's test: the current generation runs on every desired replica, old pods gone."""
    n = _counts(deployment)
    return (n["observed"] >= n["generation"] and n["updated"] >= n["desired"]
            and n["current"] <= n["updated"] and n["available"] >= n["updated"])


def applies_replicas(deployment: Mapping[str, Any], field_manager: str) -> bool:
    """Whether ``field_manager``'s server-side applies own spec.replicas (metadata.managedFields, FieldsV1)."""
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == field_manager and entry.get("operation") == "Apply":
            if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
                return True
    return False


def revision_of(deployment: Mapping[str, Any]) -> int:
    return int(((deployment.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REVISION) or 0)


def slice_replicas(slices: Iterable[Mapping[str, Any]], revision: int) -> tuple[ReplicaState, ...]:
    """The ready pods of discovery.k8s.io/v1 EndpointSlices, one replica per pod (podIP:grpc port).

    ``conditions.ready`` unset means ready (the API's rule); a terminating pod is never
    ready. A pod listed by two slices (the controller moving it) counts once. Sorted by
    address, so an unchanged set compares equal. Slices carry no pod labels: every replica
    gets ``revision``, the Deployment's (during a rollout, old pods too)."""
    found: dict[str, ReplicaState] = {}
    for endpoint_slice in slices:
        port = next((p.get("port") for p in endpoint_slice.get("ports") or [] if p.get("name") == "grpc"), None)
        if endpoint_slice.get("addressType") not in ADDRESS_TYPES or not port:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            if (endpoint.get("conditions") or {}).get("ready") is False or not addresses:
                continue
            host = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
            address = f"{host}:{port}"
            pod = (endpoint.get("targetRef") or {}).get("name") or address
            found.setdefault(address, ReplicaState(id=pod, grpc_address=address, ready=True, revision=revision))
    return tuple(found[address] for address in sorted(found))


def assess_deployment(deployment: Mapping[str, Any], replicas: tuple[ReplicaState, ...] = ()) -> RuntimeStatus:
    """Map a Deployment (API JSON) and its ready pods (``slice_replicas``) to the runtime's status.

    deploying: the controller has not observed the latest generation, the new
      revision is still rolling out (old pods keep serving), or nothing is ready yet;
    failed: Progressing=False (e.g. ProgressDeadlineExceeded) or ReplicaFailure=True,
      with the condition's message;
    healthy: Available=True and ready >= desired;
    degraded: some but not all replicas ready, either Available=True or after this
      revision had finished rolling out (Progressing reason NewReplicaSetAvailable):
      with maxUnavailable 0 one missing replica already turns Available False.
    """
    notes = (deployment.get("metadata") or {}).get("annotations") or {}
    revision = revision_of(deployment)
    triton_model = notes.get(ANNOTATION_TRITON_MODEL, "")
    n = _counts(deployment)
    conditions = _conditions(deployment)
    available = conditions.get("Available", {})
    progressing = conditions.get("Progressing", {})
    failure = conditions.get("ReplicaFailure", {})

    def status(health: Health, reason: str) -> RuntimeStatus:
        return RuntimeStatus(health=health, reason=reason, desired_replicas=n["desired"],
                             ready_replicas=n["ready"], triton_model=triton_model, replicas=replicas)

    if n["observed"] < n["generation"]:
        return status(Health.DEPLOYING, f"waiting for the controller to observe generation {n['generation']}")
    if progressing.get("status") == "False":
        return status(Health.FAILED, condition_text(progressing))
    if failure.get("status") == "True":
        return status(Health.FAILED, condition_text(failure))
    if n["updated"] < n["desired"] or n["current"] > n["updated"]:
        return status(Health.DEPLOYING, f"rolling out revision {revision}: {n['updated']} of {n['desired']} "
                                        f"replicas updated, {n['available']} available")
    ready_text = f"{n['ready']} of {n['desired']} replicas ready"
    if n["ready"] >= 1 and available.get("status") == "True":
        if n["ready"] >= n["desired"]:
            return status(Health.HEALTHY, ready_text)
        return status(Health.DEGRADED, ready_text)
    if n["ready"] >= 1 and progressing.get("reason") == "NewReplicaSetAvailable":
        return status(Health.DEGRADED, f"{ready_text}: {condition_text(available) or 'not available'}")
    return status(Health.DEPLOYING, f"{ready_text}" + (f": {condition_text(available)}" if available else ""))


def condition_text(condition: Mapping[str, Any]) -> str:
    reason, message = condition.get("reason") or "", condition.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message
