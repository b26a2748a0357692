"""Every environment reachable, through the real Envoy and the real router, with a runtime
double (no Triton: the health route and /v1/models answer from the route table): a platform
that serves dev and prod refuses a deploy to stg (400, naming what it serves); an endpoint name
deployed in dev and in prod answers as its environment's by the Host (REST /serve, OpenAI's /v1)
or the :authority (native gRPC); a Host that names an environment not served is a 404; and a
client's own x-llmops-environment header changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import requests

from llmops.v1 import inference_pb2, inference_pb2_grpc
from shared.settings import Settings

from ..conftest import ServiceHandle
from ..fakes import FakeRuntime
from ..helpers import (
    ADMIN, Gateway, LoopThread, approved_model, assert_envelope, deploy, deploy_body, split_address, start_envoy, unique, wait_status,
)

SERVED = ["dev", "prod"]
PROD = {"Host": "prod.llm-ops.local"}
WAIT_S = 20


@dataclass
class Platform:
    gateway: Gateway
    name: str  # an endpoint name deployed in dev and in prod, with models of different versions
    dev: dict
    prod: dict


@pytest.fixture(scope="module")
def platform(settings: Settings, registry: ServiceHandle, experiment: ServiceHandle, own_database: str,
             loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    from deployment.server import prepare_database
    from deployment.server import start as start_deployment
    from router.server import start as start_router

    local = settings.model_copy(update={
        "database_url": Settings(database_url=own_database, _env_file=None).database_url,
        "environments": SERVED, "environment": "dev", "reconcile_interval_s": 0.2, "rate_limit_per_minute": 0,
        "registry_port": split_address(registry.address)[1], "experiment_port": split_address(experiment.address)[1]})
    engine = prepare_database(local)
    running, service = loop_thread.run(start_deployment(local, engine=engine, runtime=FakeRuntime(), port=0))
    local = local.model_copy(update={"deployment_port": running.port})
    router = loop_thread.run(start_router(local, port=0))
    gateway = start_envoy(local, {"registry": split_address(registry.address),
                                  "deployment": ("127.0.0.1", running.port),
                                  "experiment": split_address(experiment.address),
                                  "router": ("127.0.0.1", router.running.port)},
                          tmp_path_factory.mktemp("environments-gateway"))
    try:
        name = unique("chat")
        endpoints = {}
        for environment in SERVED:
            model = approved_model(gateway, version=f"v-{environment}")
            r = deploy(gateway, deploy_body(model["id"], name=name, environment=environment))
            endpoints[environment] = wait_status(gateway, assert_envelope(r, 200, "success")["data"]["id"], "healthy")
        deadline = time.monotonic() + WAIT_S  # the router learns both from its watch
        while len(router.table.routes) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield Platform(gateway, name, endpoints["dev"], endpoints["prod"])
    finally:
        gateway.stop()
        loop_thread.run(router.running.stop(0))
        loop_thread.run(router.close())
        loop_thread.run(running.stop(0))
        loop_thread.run(service.close())
        engine.dispose()


def health(platform: Platform, headers: dict[str, str] | None = None, name: str | None = None) -> requests.Response:
    return requests.get(f"{platform.gateway.api}/serve/{name or platform.name}/health", headers=headers or {},
                        timeout=10)


def version(platform: Platform, headers: dict[str, str] | None = None) -> str:
    r = health(platform, headers)
    assert r.status_code == 200, r.text
    return r.json()["model"]["version"]


def test_a_deploy_to_an_environment_no_gateway_serves_is_refused_naming_those_served(platform):
    model = approved_model(platform.gateway)
    r = deploy(platform.gateway, deploy_body(model["id"], environment="stg"))
    message = assert_envelope(r, 400, "error")["message"]
    assert "environment stg is not served" in message and "dev, prod" in message, message
    listed = requests.get(f"{platform.gateway.api}/serving/endpoints?environment=stg", headers=ADMIN, timeout=10)
    assert assert_envelope(listed, 200, "success")["data"]["endpoints"] == []


def test_the_host_chooses_the_environment_of_the_serve_routes(platform):
    assert (platform.dev["environment"], platform.prod["environment"]) == ("dev", "prod")
    assert version(platform, PROD) == "v-prod"
    assert version(platform, {"Host": "prod.llm-ops.local:8080"}) == "v-prod"
    assert version(platform, {"Host": "dev.llm-ops.local"}) == "v-dev"
    assert version(platform) == "v-dev"  # 127.0.0.1:<port>: the default environment


def test_a_host_of_an_environment_not_served_is_a_404_that_says_so(platform):
    r = health(platform, {"Host": "stg.llm-ops.local"})
    assert r.status_code == 404, r.text
    assert "environment 'stg' is not served here; this platform serves dev, prod" in r.json()["message"]


def test_a_client_cannot_choose_the_environment_by_header(platform):
    assert version(platform, {"X-LLMOps-Environment": "prod"}) == "v-dev"
    assert version(platform, {**PROD, "X-LLMOps-Environment": "dev"}) == "v-prod"


def test_openai_models_are_the_hosts_environments(platform):
    only_prod = unique("prod-only")
    model = approved_model(platform.gateway)
    r = deploy(platform.gateway, deploy_body(model["id"], name=only_prod, environment="prod"))
    wait_status(platform.gateway, assert_envelope(r, 200, "success")["data"]["id"], "healthy")
    deadline = time.monotonic() + WAIT_S
    while health(platform, PROD, only_prod).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)

    def models(headers: dict[str, str]) -> set[str]:
        r = requests.get(f"{platform.gateway.url}/v1/models", headers={"X-User-Id": "u", **headers}, timeout=10)
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["data"]}

    assert {platform.name, only_prod} <= models(PROD)
    assert platform.name in models({}) and only_prod not in models({})
    r = requests.get(f"{platform.gateway.url}/v1/models/{only_prod}", headers={"X-User-Id": "u"}, timeout=10)
    assert r.status_code == 404 and f"no serving endpoint named '{only_prod}' in dev" in r.json()["error"]["message"]
    r = requests.get(f"{platform.gateway.url}/v1/models/{only_prod}", headers={"X-User-Id": "u", **PROD}, timeout=10)
    assert r.status_code == 200 and r.json()["id"] == only_prod
    assert health(platform, {}, only_prod).status_code == 404


def test_native_grpc_takes_the_environment_from_the_authority(platform):
    request = inference_pb2.HealthRequest(name=platform.name)
    with grpc.insecure_channel(platform.gateway.grpc_address,
                               options=[("grpc.default_authority", "prod.llm-ops.local")]) as prod:
        assert inference_pb2_grpc.InferenceServiceStub(prod).Health(request, timeout=10).model.version == "v-prod"
    with grpc.insecure_channel(platform.gateway.grpc_address) as default:
        stub = inference_pb2_grpc.InferenceServiceStub(default)
        assert stub.Health(request, timeout=10).model.version == "v-dev"
        spoofed = stub.Health(request, metadata=(("x-llmops-environment", "prod"),), timeout=10)
        assert spoofed.model.version == "v-dev"
    with grpc.insecure_channel(platform.gateway.grpc_address,
                               options=[("grpc.default_authority", "stg.llm-ops.local")]) as stg:
        with pytest.raises(grpc.RpcError) as refused:
            inference_pb2_grpc.InferenceServiceStub(stg).Health(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "not served" in refused.value.details()
