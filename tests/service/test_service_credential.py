"""The credential between the gateway and the services: with service_credential_required, a service
answers only callers that present the service token (the gateway adds it to all it forwards, the
services to what they call each other with), so a pod that reaches a service port directly cannot
claim whatever X-User-Id and X-User-Roles it likes. Health stays open to probes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr, ValidationError

from deployment.catalog import RegistryCatalog
from llmops.v1 import registry_pb2, registry_pb2_grpc
from shared.errors import NotFound, Unavailable
from shared.identity import SERVICE_TOKEN_KEY, Identity
from shared.settings import Settings

from ..helpers import ADMIN, ON_SQLITE_ONLY, SERVICE_TOKEN, Gateway, LoopThread, model_body, split_address, start_envoy

pytestmark = ON_SQLITE_ONLY  # the service credential, not the repositories

ADMIN_METADATA = (("x-user-id", "admin"), ("x-user-roles", "admin"))


@pytest.fixture(scope="module")
def locked(settings: Settings, loop_thread: LoopThread) -> Iterator[str]:
    """A registry that requires the credential, on its own port (and the session's database)."""
    from registry.server import prepare_database, start

    strict = settings.model_copy(update={"service_credential_required": True})
    engine = prepare_database(strict)
    running = loop_thread.run(start(strict, engine=engine, port=0))
    yield f"127.0.0.1:{running.port}"
    loop_thread.run(running.stop(0))
    engine.dispose()


@pytest.fixture(scope="module")
def gateway_in_front(settings: Settings, locked: str, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_envoy(settings, {"registry": split_address(locked)}, tmp_path_factory.mktemp("credential-gateway"))
    yield gw
    gw.stop()


def reason_of(error: grpc.RpcError) -> str:
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    [info] = [error_details_pb2.ErrorInfo.FromString(d.value) for d in status.details
              if d.type_url.endswith("google.rpc.ErrorInfo")]
    return info.reason


def list_models(address: str, metadata) -> registry_pb2.ListModelsResponse:
    with grpc.insecure_channel(address) as channel:
        return registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
            registry_pb2.ListModelsRequest(), metadata=metadata, timeout=10)


@pytest.mark.parametrize("credential", [(), ((SERVICE_TOKEN_KEY, "guessed"),), ((SERVICE_TOKEN_KEY, ""),)])
def test_a_direct_call_without_the_credential_is_refused(locked, credential):
    with pytest.raises(grpc.RpcError) as refused:
        list_models(locked, ADMIN_METADATA + credential)  # an admin identity, claimed by whoever calls
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(refused.value) == "SERVICE_CREDENTIAL_REQUIRED"
    assert "through the gateway" in refused.value.details()


def test_a_direct_call_with_the_credential_is_answered(locked):
    list_models(locked, ADMIN_METADATA + ((SERVICE_TOKEN_KEY, SERVICE_TOKEN),))


def test_health_stays_open_to_probes(locked):
    with grpc.insecure_channel(locked) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_gateway_presents_it(gateway_in_front):
    created = requests.post(f"{gateway_in_front.api}/catalog/models", headers=ADMIN, json=model_body())
    assert created.status_code == 200, created.text
    assert created.json()["data"]["createdBy"] == "admin"


def test_the_gateway_replaces_a_credential_a_client_sends(settings, locked, tmp_path):
    # A gateway without the token drops the client's header: sending the right one through it gets nothing.
    bare = start_envoy(settings.model_copy(update={"service_token": None}), {"registry": split_address(locked)},
                       tmp_path)
    try:
        r = requests.get(f"{bare.api}/catalog/models", headers={**ADMIN, SERVICE_TOKEN_KEY: SERVICE_TOKEN})
        assert r.status_code == 401, r.text
        assert r.json()["status"] == "error" and "through the gateway" in r.json()["message"]
    finally:
        bare.stop()


async def test_the_services_present_it_to_each_other(locked):
    admin = Identity("admin", frozenset({"admin"}))
    with_it = RegistryCatalog(locked, service_token=SecretStr(SERVICE_TOKEN))
    without = RegistryCatalog(locked)
    try:
        with pytest.raises(Unavailable):  # refused: to the deployment service, the registry is not answering
            await without.get_model("00000000-0000-0000-0000-000000000000", actor=admin)
        with pytest.raises(NotFound):  # answered: the model just does not exist
            await with_it.get_model("00000000-0000-0000-0000-000000000000", actor=admin)
    finally:
        await with_it.close()
        await without.close()


def test_requiring_it_without_one_is_a_configuration_error():
    with pytest.raises(ValidationError, match="service_token"):
        Settings(service_credential_required=True, service_token=None, _env_file=None)
