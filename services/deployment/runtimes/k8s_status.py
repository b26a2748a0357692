"""Reading a Deployment read from the API (its JSON): pure functions, no I/O.

``assess_deployment`` turns it into the runtime's RuntimeStatus, ``rolled_out`` is
`kubectl rollout status`'s test, and ``applies_replicas`` reads its managedFields
to tell whether a field manager still owns spec.replicas through server-side apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Health, ReplicaState, RuntimeStatus
from .k8s_names import ANNOTATION_REVISION, ANNOTATION_TRITON_MODEL, LABEL_ENDPOINT, service_grpc_address


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


def assess_deployment(deployment: Mapping[str, Any], namespace: str) -> RuntimeStatus:
    """Map a Deployment (API JSON) to the runtime's status.

    deploying: the controller has not observed the latest generation, the new
      revision is still rolling out (old pods keep serving), or nothing is ready yet;
    failed: Progressing=False (e.g. ProgressDeadlineExceeded) or ReplicaFailure=True,
      with the condition's message;
    healthy: Available=True and ready >= desired;
    degraded: some but not all replicas ready, either Available=True or after this
      revision had finished rolling out (Progressing reason NewReplicaSetAvailable):
      with maxUnavailable 0 one missing replica already turns Available False.
    """
    metadata = deployment.get("metadata") or {}
    notes = metadata.get("annotations") or {}
    endpoint_id = (metadata.get("labels") or {}).get(LABEL_ENDPOINT) or metadata.get("name", "").removeprefix(
        "serving-")
    revision = int(notes.get(ANNOTATION_REVISION) or 0)
    triton_model = notes.get(ANNOTATION_TRITON_MODEL, "")
    n = _counts(deployment)
    conditions = _conditions(deployment)
    available = conditions.get("Available", {})
    progressing = conditions.get("Progressing", {})
    failure = conditions.get("ReplicaFailure", {})

    def status(health: Health, reason: str) -> RuntimeStatus:
        replicas: tuple[ReplicaState, ...] = ()
        if n["ready"] >= 1:
            replicas = (ReplicaState(id=metadata.get("name", ""),
                                     grpc_address=service_grpc_address(endpoint_id, namespace),
                                     ready=True, revision=revision),)
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
