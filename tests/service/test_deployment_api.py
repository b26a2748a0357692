"""Serving endpoints through the real Envoy and the real registry, with a
runtime double: the seed's sections 1, 2 and 6 shapes, the rules, the
revisions, and bad input that leaves nothing behind."""

from __future__ import annotations

import concurrent.futures
import uuid

import pytest
import requests

from ..helpers import (
    ADMIN, RESEARCHER, approved_model, assert_envelope, deploy, deploy_body, register, unique, wait_status,
)

TABLES = ("deployment_endpoints", "deployment_revisions", "deployment_audit_records")


def endpoint_ids(deployment) -> set[str]:
    from sqlalchemy import text
    with deployment.engine.connect() as conn:
        return {str(uuid.UUID(str(i))) for i in conn.execute(text("SELECT id FROM deployment_endpoints")).scalars()}


@pytest.fixture
def unchanged(deployment, fake_runtime):
    """No row written, and nothing started in the runtime for an endpoint that did not exist."""
    before = {t: deployment.count(t) for t in TABLES}
    known = endpoint_ids(deployment)
    yield
    assert {t: deployment.count(t) for t in TABLES} == before
    assert set(fake_runtime.specs) <= known


@pytest.fixture(scope="module")
def model(gateway) -> dict:
    return approved_model(gateway)


def test_deploy_answers_the_seed_shape_and_becomes_healthy(gateway, model):
    r = deploy(gateway, deploy_body(model["id"], name=unique("chat-model")))
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Serving endpoint deployed successfully"
    data = body["data"]
    uuid.UUID(data["id"])
    assert {k: data[k] for k in ("modelId", "environment", "minReplicas", "maxReplicas")} == \
        {"modelId": model["id"], "environment": "dev", "minReplicas": 1, "maxReplicas": 3}
    assert data["route"].startswith("/llm-ops/v1/serve/chat-model-")
    assert data["status"] == "deploying" and data["revision"] == 1 and data["createdAt"].endswith("Z")
    healthy = wait_status(gateway, data["id"], "healthy")
    assert healthy["readyReplicas"] == 1 and healthy["autoscalePolicy"] == {"cpuUtilization": 70}


def test_list_filters_combine(gateway, model):
    other = approved_model(gateway)
    a = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
    b = assert_envelope(deploy(gateway, deploy_body(other["id"], environment="stg")), 200, "success")["data"]
    wait_status(gateway, a["id"], "healthy")
    wait_status(gateway, b["id"], "healthy")

    def ids(query: str) -> set[str]:
        r = requests.get(f"{gateway.api}/serving/endpoints?{query}", headers=ADMIN)
        return {e["id"] for e in assert_envelope(r, 200, "success")["data"]["endpoints"]}

    assert {a["id"], b["id"]} <= ids("")
    assert a["id"] in ids("environment=dev") and b["id"] not in ids("environment=dev")
    assert ids(f"modelId={other['id']}") == {b["id"]}
    assert ids(f"modelId={other['id']}&status=healthy") == {b["id"]}
    assert ids(f"modelId={other['id']}&status=deploying") == set()
    assert ids(f"modelId={other['id']}&environment=dev") == set()


def test_update_then_rollback_serves_the_previous_revision(gateway, model, fake_runtime):
    second = approved_model(gateway)
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
    wait_status(gateway, ep["id"], "healthy")
    url = f"{gateway.api}/serving/endpoints/{ep['id']}"

    r = requests.patch(url, json={"modelId": second["id"], "maxReplicas": 4}, headers=ADMIN)
    updated = assert_envelope(r, 200, "success")["data"]
    assert (updated["revision"], updated["modelId"], updated["maxReplicas"]) == (2, second["id"], 4)
    wait_status(gateway, ep["id"], "healthy")
    assert fake_runtime.specs[ep["id"]].model.id == second["id"]

    r = requests.post(f"{url}/rollback", headers=ADMIN)
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Endpoint rolled back successfully"
    assert body["data"]["status"] == "rollback"
    assert (body["data"]["modelId"], body["data"]["maxReplicas"], body["data"]["revision"]) == (model["id"], 3, 3)
    wait_status(gateway, ep["id"], "healthy")
    assert fake_runtime.specs[ep["id"]].model.id == model["id"]

    # Revision 3 is revision 1 again, which had nothing before it.
    r = requests.post(f"{url}/rollback", headers=ADMIN)
    assert "nothing to roll back" in assert_envelope(r, 409, "error")["message"]

    r = requests.get(f"{url}/revisions", headers=ADMIN)
    revisions = assert_envelope(r, 200, "success")["data"]["revisions"]
    assert [(x["revision"], x["reason"], x["modelId"]) for x in revisions] == [
        (3, "rollback", model["id"]), (2, "update", second["id"]), (1, "deploy", model["id"])]


def test_rollback_without_previous_revision_is_409_and_writes_nothing(gateway, model, deployment):
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
    before = {t: deployment.count(t) for t in TABLES}
    r = requests.post(f"{gateway.api}/serving/endpoints/{ep['id']}/rollback", headers=ADMIN)
    assert "no previous revision" in assert_envelope(r, 409, "error")["message"]
    assert {t: deployment.count(t) for t in TABLES} == before


def test_delete_stops_serving_and_frees_the_route(gateway, model, fake_runtime):
    name = unique("temp")
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"], name=name)), 200, "success")["data"]
    wait_status(gateway, ep["id"], "healthy")
    r = requests.delete(f"{gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN)
    assert assert_envelope(r, 200, "success")["data"]["status"] == "deleted"
    assert ep["id"] not in fake_runtime.specs
    assert_envelope(requests.get(f"{gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN), 404, "error")
    listed = requests.get(f"{gateway.api}/serving/endpoints", headers=ADMIN).json()["data"]["endpoints"]
    assert ep["id"] not in {e["id"] for e in listed}
    again = assert_envelope(deploy(gateway, deploy_body(model["id"], name=name)), 200, "success")["data"]
    assert again["id"] != ep["id"]


def test_concurrent_updates_are_serialised(gateway, model):
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"], maxReplicas=20)), 200, "success")["data"]
    url = f"{gateway.api}/serving/endpoints/{ep['id']}"

    def patch(n: int) -> int:
        r = requests.patch(url, json={"maxReplicas": 10 + n}, headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()["data"]["revision"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        numbers = sorted(pool.map(patch, range(8)))
    assert numbers == list(range(2, 10))
    revisions = requests.get(f"{url}/revisions", headers=ADMIN).json()["data"]["revisions"]
    # Each revision's parent is the one before it: no two mutations interleaved.
    assert [r["revision"] for r in revisions] == list(range(9, 0, -1))


def test_failed_rollout_reports_failed_with_the_reason(gateway, model, fake_runtime):
    name = unique("failing")
    fake_runtime.fail_next[name] = "replica exited during start-up: bad gguf"
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"], name)), 200, "success")["data"]
    failed = wait_status(gateway, ep["id"], "failed")
    assert "bad gguf" in failed["statusReason"]


# bad input and conflicts ------------------------------------------------------------------------------------

def test_unapproved_model_is_409(gateway, unchanged):
    draft = register(gateway)
    r = deploy(gateway, deploy_body(draft["id"]))
    assert "not approved" in assert_envelope(r, 409, "error")["message"]


def test_unknown_model_is_404(gateway, unchanged):
    missing = str(uuid.uuid4())
    r = deploy(gateway, deploy_body(missing))
    assert missing in assert_envelope(r, 404, "error")["message"]


def test_duplicate_route_is_409_per_environment(gateway, model):
    name = unique("dup")
    assert_envelope(deploy(gateway, deploy_body(model["id"], name=name)), 200, "success")
    r = deploy(gateway, deploy_body(model["id"], name=name))
    assert "already served" in assert_envelope(r, 409, "error")["message"]
    assert_envelope(deploy(gateway, deploy_body(model["id"], name=name, environment="prod")), 200, "success")


@pytest.mark.parametrize("route", ["/llm-ops/v1/serve/Chat_Model", "/llm-ops/v1/serve/", "/serve/chat",
                                   "/llm-ops/v1/serve/a/b", "/llm-ops/v1/serve/-x", "/llm-ops/v1/serve/" + "x" * 64])
def test_bad_route(gateway, model, unchanged, route):
    r = deploy(gateway, deploy_body(model["id"], route=route))
    assert "route must be" in assert_envelope(r, 400, "error")["message"]


@pytest.mark.parametrize("overrides,needle", [
    ({"minReplicas": 3, "maxReplicas": 2}, "maxReplicas (2) must not be less than minReplicas (3)"),
    ({"minReplicas": 0}, "minReplicas must be at least 1"),
    ({"maxReplicas": 100}, "maxReplicas must be at most"),
    ({"autoscalePolicy": {"cpuUtilization": 0}}, "cpuUtilization"),
    ({"autoscalePolicy": {"cpuUtilization": 150}}, "cpuUtilization"),
    ({"environment": "qa"}, "environment must be one of"),
    ({"modelId": "not-a-uuid"}, "modelId is not a valid UUID"),
    ({"modelId": ""}, "modelId is required"),
    ({"route": ""}, "route is required"),
])
def test_bad_deploy_input(gateway, model, unchanged, overrides, needle):
    r = deploy(gateway, deploy_body(model["id"], **overrides))
    assert needle in assert_envelope(r, 400, "error")["message"]


def test_bad_update_input_writes_nothing(gateway, model, deployment):
    ep = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
    url = f"{gateway.api}/serving/endpoints/{ep['id']}"
    before = {t: deployment.count(t) for t in TABLES}
    assert_envelope(requests.patch(url, json={"minReplicas": 5}, headers=ADMIN), 400, "error")
    assert_envelope(requests.patch(url, json={}, headers=ADMIN), 400, "error")
    draft = register(gateway)
    assert_envelope(requests.patch(url, json={"modelId": draft["id"]}, headers=ADMIN), 409, "error")
    assert {t: deployment.count(t) for t in TABLES} == before


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("PATCH", ""), ("POST", "/rollback"), ("DELETE", ""),
                                           ("GET", "/revisions")])
def test_unknown_endpoint_id_is_404(gateway, unchanged, method, suffix):
    missing = str(uuid.uuid4())
    r = requests.request(method, f"{gateway.api}/serving/endpoints/{missing}{suffix}",
                         json={"maxReplicas": 2} if method == "PATCH" else None, headers=ADMIN)
    assert missing in assert_envelope(r, 404, "error")["message"]


def test_malformed_endpoint_id_is_400(gateway, unchanged):
    assert_envelope(requests.get(f"{gateway.api}/serving/endpoints/xyz", headers=ADMIN), 400, "error")


def test_bad_list_filters(gateway):
    assert_envelope(requests.get(f"{gateway.api}/serving/endpoints?status=sleeping", headers=ADMIN), 400, "error")
    assert_envelope(requests.get(f"{gateway.api}/serving/endpoints?modelId=abc", headers=ADMIN), 400, "error")


def test_researchers_cannot_deploy(gateway, model, unchanged):
    r = requests.post(f"{gateway.api}/serving/endpoints", json=deploy_body(model["id"]), headers=RESEARCHER)
    assert_envelope(r, 403, "error")
