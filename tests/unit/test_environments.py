"""Every environment reachable, without starting a process: the settings that say which
environments a platform serves, the gateway's Host -> environment mapping as rendered into the
Envoy config (matched here the way Envoy matches a Host against virtual hosts), the router's
route table keyed by (environment, endpoint name), and the router taking the environment the
gateway names (x-llmops-environment) for /serve, /v1 and native gRPC alike."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from llmops.v1 import deployment_pb2, experiment_pb2, inference_pb2
from router.experiments import ExperimentTable
from router.limits import RateLimiter
from router.prompting import Message, SamplingRequest
from router.routes import RouteTable
from router.service import InferenceService
from router.servicer import InferenceServicer
from shared.environments import ENVIRONMENT_KEY
from shared.errors import NotFound
from shared.gateway import render_envoy_config
from shared.identity import Identity
from shared.settings import Settings

from ..fakes import RecordedOutcomes, RecordingPool

# ------------------------------------------------------------------ settings


def test_by_default_a_platform_serves_every_environment_and_dev_is_the_default():
    settings = Settings(_env_file=None)
    assert settings.environments == ["dev", "stg", "prod"] and settings.environment == "dev"


def test_environments_come_from_llmops_environments_and_the_default_follows_them(monkeypatch):
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", '["prod"]')
    settings = Settings(_env_file=None)
    assert settings.environments == ["prod"] and settings.environment == "prod"
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", '["stg", "prod", "stg"]')
    assert Settings(_env_file=None).environments == ["stg", "prod"]
    monkeypatch.setenv("LLMOPS_ENVIRONMENT", "prod")
    assert Settings(_env_file=None).environment == "prod"


@pytest.mark.parametrize("overrides, needle", [
    ({"environments": ["prod"], "environment": "dev"}, "environment dev is not one of environments (prod)"),
    ({"environments": []}, "environments"),
    ({"environments": ["qa"]}, "environments"),
])
def test_a_default_that_is_not_served_or_an_unknown_environment_is_refused(overrides, needle):
    with pytest.raises(pydantic.ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Settings(_env_file=None, **overrides)


# ------------------------------------------------------------------ the gateway: Host -> environment


def virtual_hosts(tmp_path: Path, **overrides) -> list[dict]:
    settings = Settings(_env_file=None, service_token="t", **overrides)
    config = yaml.safe_load(render_envoy_config(settings, clusters={"router": ("127.0.0.1", 1)}, out_dir=tmp_path,
                                                listen_port=1, admin_port=2).read_text())
    [listener] = [item for item in config["static_resources"]["listeners"] if item["name"] == "gateway"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["route_config"]["virtual_hosts"]


def envoy_virtual_host(hosts: list[dict], host: str) -> dict:
    """The virtual host Envoy picks for a Host (or :authority): exact domain, then the longest suffix
    wildcard (*.x), then the longest prefix wildcard (x.*), then "*"; the port is part of the Host."""
    host = host.lower()
    exact = [h for h in hosts if host in h["domains"]]
    suffix = [(len(d), h) for h in hosts for d in h["domains"]
              if d.startswith("*") and d != "*" and host.endswith(d[1:]) and len(host) > len(d) - 1]
    prefix = [(len(d), h) for h in hosts for d in h["domains"]
              if d.endswith("*") and d != "*" and host.startswith(d[:-1]) and len(host) > len(d) - 1]
    anything = [h for h in hosts if "*" in h["domains"]]
    for found in (exact, [h for _, h in sorted(suffix, key=lambda x: -x[0])],
                  [h for _, h in sorted(prefix, key=lambda x: -x[0])], anything):
        if found:
            return found[0]
    raise AssertionError(f"no virtual host for {host}")


def environment_set(vhost: dict) -> str:
    [added] = [h for h in vhost["request_headers_to_add"] if h["header"]["key"] == ENVIRONMENT_KEY]
    # Over whatever the client sent: a client's own x-llmops-environment never reaches the router.
    assert added["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"
    return added["header"]["value"]


@pytest.mark.parametrize("host, environment", [
    ("dev.llm-ops.local", "dev"), ("stg.llm-ops.local", "stg"), ("prod.llm-ops.local", "prod"),
    ("prod.llm-ops.local:8080", "prod"), ("PROD.LLM-OPS.LOCAL", "prod"), ("stg.llm-ops.example.com:443", "stg"),
    ("localhost", "dev"), ("localhost:8080", "dev"), ("127.0.0.1:8080", "dev"), ("[::1]:8080", "dev"),
    ("llm-ops.local", "dev"), ("production.llm-ops.local", "dev"), ("prod", "dev"), ("", "dev"),
])
def test_the_host_names_the_environment_and_any_other_host_is_the_default(tmp_path, host, environment):
    assert environment_set(envoy_virtual_host(virtual_hosts(tmp_path), host)) == environment


def test_the_default_environment_is_the_settings_one(tmp_path):
    hosts = virtual_hosts(tmp_path, environments=["stg", "prod"])
    assert environment_set(envoy_virtual_host(hosts, "localhost:8080")) == "stg"
    assert environment_set(envoy_virtual_host(hosts, "prod.llm-ops.local")) == "prod"
    # Not served here, still named: the router answers that dev is not served, not stg's endpoints.
    assert environment_set(envoy_virtual_host(hosts, "dev.llm-ops.local")) == "dev"


def test_every_virtual_host_has_the_same_routes_and_the_service_credential(tmp_path):
    hosts = virtual_hosts(tmp_path)
    assert len(hosts) == 4 and all(h["routes"] == hosts[0]["routes"] for h in hosts)
    assert any(r["match"].get("prefix") == "/llmops.v1.InferenceService/" for r in hosts[0]["routes"])
    for vhost in hosts:
        token = [h for h in vhost["request_headers_to_add"] if h["header"]["key"] == "x-llmops-service-token"]
        assert token == [{"header": {"key": "x-llmops-service-token", "value": "t"},
                          "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


# ------------------------------------------------------------------ the route table


def routed(endpoint_id: str, name: str, environment: str, replica: str,
           model: str = "m") -> deployment_pb2.RoutedEndpoint:
    return deployment_pb2.RoutedEndpoint(
        endpoint=deployment_pb2.Endpoint(id=endpoint_id, name=name, environment=environment, status="healthy"),
        triton_model="llm", model=deployment_pb2.RevisionModel(name=model, version=f"{model}-{environment}",
                                                               type="chat"),
        replicas=[deployment_pb2.Replica(id="r", grpc_address=replica, ready=True)])


def snapshot(*endpoints: deployment_pb2.RoutedEndpoint) -> deployment_pb2.WatchEndpointsResponse:
    return deployment_pb2.WatchEndpointsResponse(kind="snapshot", endpoints=list(endpoints))


def test_the_route_table_holds_one_name_in_each_environment():
    table = RouteTable()
    table.apply(snapshot(routed("d", "chat", "dev", "dev:1"), routed("s", "chat", "stg", "stg:1"),
                         routed("p", "chat", "prod", "prod:1"), routed("p2", "other", "prod", "prod:2")))
    assert {key: r.endpoint_id for key, r in table.routes.items()} == {
        ("dev", "chat"): "d", ("stg", "chat"): "s", ("prod", "chat"): "p", ("prod", "other"): "p2"}
    assert table.get("chat", "prod").replicas == ("prod:1",) and table.get("chat").replicas == ("dev:1",)
    assert [r.name for r in table.of_environment("prod")] == ["chat", "other"]
    assert table.get("other", "dev") is None
    table.apply(deployment_pb2.WatchEndpointsResponse(kind="delete", endpoints=[
        deployment_pb2.RoutedEndpoint(endpoint=deployment_pb2.Endpoint(id="p"))]))
    assert table.get("chat", "prod") is None and table.get("chat", "dev").endpoint_id == "d"
    assert table.replica_addresses() == {"dev:1", "stg:1", "prod:2"}


def test_the_route_table_keeps_only_the_served_environments_and_refuses_the_others():
    table = RouteTable(environments=("prod",), default_environment="prod")
    table.apply(snapshot(routed("d", "chat", "dev", "dev:1"), routed("p", "chat", "prod", "prod:1")))
    assert set(table.routes) == {("prod", "chat")} and table.get("chat").endpoint_id == "p"
    assert table.environment_of(None) == "prod" and table.environment_of("prod") == "prod"
    with pytest.raises(NotFound, match="environment 'dev' is not served here; this platform serves prod") as refused:
        table.environment_of("dev")
    assert refused.value.reason == "ENVIRONMENT_NOT_SERVED"


# ------------------------------------------------------------------ the router: the environment of a request

def router(*experiments: experiment_pb2.ActiveExperiment) -> tuple[InferenceService, RecordingPool]:
    table = RouteTable(environments=("dev", "prod"))
    table.apply(snapshot(routed("d", "chat", "dev", "dev:1", model="small"),
                         routed("p", "chat", "prod", "prod:1", model="large"),
                         routed("p2", "prod-only", "prod", "prod:2")))
    active = ExperimentTable()
    active.apply(experiment_pb2.WatchExperimentsResponse(kind="snapshot", experiments=list(experiments)))
    pool = RecordingPool()
    return InferenceService(table=table, pool=pool, limiter=RateLimiter(0), outcomes=RecordedOutcomes(), timeout_s=5,
                            max_output_tokens=16, experiments=active), pool


async def chat(service: InferenceService, environment: str | None, name: str = "chat"):  # noqa: ANN201
    answer = await service.chat_stream(actor=Identity("u"), name=name, messages=[Message("user", "Hi")],
                                       sampling=SamplingRequest(max_tokens=1), buffered=True, environment=environment)
    return (await service.collect(answer, name))[0]


async def test_a_request_goes_to_the_endpoint_of_its_environment():
    service, pool = router()
    await chat(service, "prod")
    await chat(service, "dev")
    await chat(service, None)  # not through the gateway: the default environment
    assert pool.addresses == ["prod:1", "dev:1", "dev:1"]
    await chat(service, "prod", name="prod-only")
    with pytest.raises(NotFound, match="no serving endpoint named 'prod-only' in dev"):
        await chat(service, "dev", name="prod-only")
    with pytest.raises(NotFound, match="environment 'stg' is not served here; this platform serves dev, prod"):
        await chat(service, "stg")


async def test_the_models_and_health_of_an_environment_are_its_own():
    service, _ = router()
    assert [r.name for r in await service.served(environment="prod")] == ["chat", "prod-only"]
    assert [r.name for r in await service.served()] == ["chat"]
    assert (await service.health(name="chat", environment="prod")).model_version == "large-prod"
    assert (await service.health(name="chat")).model_version == "small-dev"
    assert (await service.served_model(name="chat", environment="prod")).model_name == "large"
    with pytest.raises(NotFound, match="in dev"):
        await service.health(name="prod-only")


async def test_an_experiment_on_a_name_applies_to_that_endpoint_of_the_default_environment_only():
    running = experiment_pb2.ActiveExperiment(
        experiment=experiment_pb2.Experiment(id="exp", template_a_id="ta", template_b_id="tb", allocation=100,
                                             endpoint="chat", endpoint_id="d", status="running", model_type="chat"),
        template_a_content="A", template_b_content="B")
    service, _ = router(running)
    assert (await chat(service, "dev")).experiment.experiment_id == "exp"
    assert (await chat(service, "prod")).experiment is None


class GatewayContext:
    """A call's context as the servicer sees it through the gateway: its metadata."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def send_initial_metadata(self, metadata) -> None:  # noqa: ANN001
        pass


async def test_the_servicers_take_the_environment_the_gateway_names():
    service, pool = router()
    servicer = InferenceServicer(service)
    request = inference_pb2.HealthRequest(name="chat")
    prod = await servicer.Health(request, GatewayContext(("x-user-id", "u"), (ENVIRONMENT_KEY, "prod")))
    assert prod.model.version == "large-prod"
    assert (await servicer.Health(request, GatewayContext())).model.version == "small-dev"
    models = await servicer.ListServedModels(inference_pb2.ListServedModelsRequest(),
                                             GatewayContext((ENVIRONMENT_KEY, "prod")))
    assert [(m.id, m.owned_by) for m in models.data] == [("chat", "large"), ("prod-only", "m")]
    await servicer.Chat(inference_pb2.ChatRequest(name="chat", messages=[inference_pb2.ChatMessage(
        role="user", content="Hi")], max_tokens=1), GatewayContext((ENVIRONMENT_KEY, "prod")))
    assert pool.addresses == ["prod:1"]
