"""deploy/kubernetes/base/deployment-rbac.yaml allows exactly what the deployment service calls.

Every request the Kubernetes runtime and the leader elector make during a full lifecycle
(start and watch, deploy, status, an HPA scale, a new revision, a rollback, removal,
election, renewal and release) is recorded by the API mock (kmock) and turned into the
(API group, resource, verb, name) RBAC authorises; the rules must allow each one, and
each rule's every verb must have been needed.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from deployment.leader import LeaseElector, LeaseTimings
from deployment.runtimes.kubernetes import KubernetesRuntime

from ..fakes import Cluster
from .test_kubernetes_runtime import AVAILABLE, CHAT, EMBEDDING, PROGRESS_DONE, make_settings, make_spec

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "deployment-rbac.yaml"
AGENT = "llmops-deployment-under-test"
LEASE = "llmops-deployment-leader"

Call = tuple[str, str, str, str]  # (API group, resource[/subresource], verb, object name)


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def verb_of(request: Any) -> str:
    if request.method == "GET":
        if request.name:
            return "get"
        return "watch" if request.params.get("watch") == "true" else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[request.method]


def calls_of(cluster: Cluster) -> set[Call]:
    """What the code under test asked (the test's own helpers use another client, another User-Agent)."""
    calls = set()
    for request in cluster.emulator:
        agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
        if agent != AGENT or request.resource is None:
            continue
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        calls.add((request.resource.group, resource, verb_of(request), request.name or ""))
    return calls


def allows(rule: dict[str, Any], call: Call, verb: str | None = None) -> bool:
    group, resource, call_verb, name = call
    return (group in rule["apiGroups"] and resource in rule["resources"] and (verb or call_verb) in rule["verbs"]
            and (not rule.get("resourceNames") or name in rule["resourceNames"]))


def lifecycle(cluster: Cluster) -> set[Call]:
    """Everything the deployment service does to a cluster, with its own client."""
    api_client = k8s.ApiClient(cluster.api_client.configuration)
    api_client.user_agent = AGENT
    settings = make_settings()
    endpoint_id = str(uuid.uuid4())
    name = f"serving-{endpoint_id}"

    async def scenario() -> None:
        runtime = KubernetesRuntime(settings, api_client, wait_for_rollout=False)
        await runtime.status(endpoint_id)  # before start(): not watching, the slices are listed
        await runtime.start()
        elector = LeaseElector(k8s.CoordinationV1Api(api_client), name=LEASE, namespace="llmops",
                               identity="deployment-0", timings=LeaseTimings(15, 10, 0.02))
        assert await elector.try_acquire_or_renew()  # create
        assert await elector.try_acquire_or_renew()  # get, update
        elector.leading = True
        await runtime.apply(make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=2))
        await asyncio.to_thread(cluster.set_deployment_status, "default", name, replicas=2, ready=2,
                                conditions=[AVAILABLE, PROGRESS_DONE])
        await asyncio.to_thread(cluster.set_endpoint_slice, "default", name, {"10.0.0.1": True, "10.0.0.2": True})
        await runtime.status(endpoint_id)
        await runtime.apply(make_spec(EMBEDDING, endpoint_id=endpoint_id, revision=2, min_replicas=2))  # handover
        await asyncio.to_thread(cluster.scale_as_the_hpa, "default", name, 3)
        await runtime.apply(make_spec(CHAT, endpoint_id=endpoint_id, revision=1, min_replicas=2))  # rollback
        await runtime.status(endpoint_id)
        await runtime.remove(endpoint_id)
        await runtime.remove(endpoint_id)  # idempotent: 404s
        await elector.close()  # release: get, update
        await runtime.close()

    asyncio.run(scenario())
    api_client.close()
    return calls_of(cluster)


@pytest.fixture()
def recorded(cluster) -> set[Call]:
    return lifecycle(cluster)


def test_the_lifecycle_made_the_calls_expected(recorded):
    """The recording itself can fail: these calls must be in it."""
    verbs = {(group, resource, verb) for group, resource, verb, _ in recorded}
    assert {("apps", "deployments", "patch"), ("", "services", "delete"), ("discovery.k8s.io", "endpointslices",
            "watch"), ("coordination.k8s.io", "leases", "update")} <= verbs
    assert not [c for c in recorded if c[1].endswith("/status") or c[1].endswith("/scale")]  # the test's own


def test_every_call_is_allowed(recorded):
    rules = [rule for doc in by_kind("ClusterRole") + by_kind("Role") for rule in doc["rules"]]
    refused = sorted(call for call in recorded if not any(allows(rule, call) for rule in rules))
    assert refused == []


def test_every_rule_is_needed(recorded):
    unused = [(doc["metadata"]["name"], rule["resources"], verb)
              for doc in by_kind("ClusterRole") + by_kind("Role") for rule in doc["rules"] for verb in rule["verbs"]
              if not any(allows(rule, call, verb) and call[2] == verb for call in recorded)]
    assert unused == []


def test_a_missing_verb_would_be_caught(recorded):
    """The check above can fail: a rule without delete leaves the removal refused."""
    rule = {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}
    deployment_calls = [c for c in recorded if c[1] == "deployments"]
    assert [c[2] for c in deployment_calls if not allows(rule, c)] == ["delete"]


def test_the_bindings_grant_the_roles_to_the_service_account():
    (account,) = by_kind("ServiceAccount")
    roles = {(d["kind"], d["metadata"]["name"]) for d in by_kind("ClusterRole") + by_kind("Role")}
    bindings = by_kind("RoleBinding")
    assert not by_kind("ClusterRoleBinding")  # never cluster-wide: granted namespace by namespace
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert account["metadata"]["name"] == "llmops-deployment"


def test_the_lease_rule_names_the_settings_lease():
    assert make_settings().leader_lease_name == LEASE
    (leader,) = by_kind("Role")
    assert any(rule.get("resourceNames") == [LEASE] for rule in leader["rules"])


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_the_rbac_objects_pass_the_official_schema(doc):
    if doc["kind"] == "RoleBinding":  # kustomize sets the subject's namespace (the overlay's)
        doc = {**doc, "subjects": [{**s, "namespace": "llmops"} for s in doc["subjects"]]}
    assert kubernetes_validate.validate(doc, "1.37", strict=True) == "1.37"
