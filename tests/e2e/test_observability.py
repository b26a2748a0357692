"""Observability of the platform as `make up` runs it (the supervised launcher, real
Envoy, every service as its own process, a real Triton replica of the echo model):

- the Grafana dashboard (deploy/grafana/llmops-dashboard.json) queries only metrics
  that the processes export: every metric name in every panel's PromQL is looked up
  in what the services' /metrics, the supervisor's and Envoy's /stats/prometheus
  serve, so a renamed metric fails here;
- each service serves its own /metrics port, with the metrics that are its own (the
  router's queue depth, the deployment service's replicas per endpoint);
- one request is followed by its request id across processes: Envoy's access log, the
  log lines of the router, the deployment service, the registry and the experiment
  service, and Triton (its verbose log, switched on at run time through its logging API).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from llmops.v1 import deployment_pb2, experiment_pb2
from router.backends import Chunk, Sampling
from router.experiments import ExperimentTable
from router.limits import RateLimiter
from router.prompting import Message, SamplingRequest
from router.routes import RouteTable
from router.service import InferenceService
from shared import api
from shared.errors import Unavailable
from shared.identity import Identity
from shared.settings import REPLICA_KEY_HEADER, Settings

from ..fakes import RecordedOutcomes
from ..helpers import (
    ADMIN, REPO_ROOT, RESEARCHER, SERVICE_TOKEN, approved_echo_model, free_port, free_port_run, make_up, make_up_ports,
    wait_for,
)

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "llmops-dashboard.json"
WAIT_S = 180  # for things that are expected to happen (a replica ready, a log line written), not a speed bound
# Grafana's own variables of a range, which PromQL does not know; $service, $endpoint sit in label strings.
GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}")
# The exposition format's lines, as Prometheus reads them (prometheus_client's parser renames a counter's
# samples to end in _total, which Envoy's envoy_cluster_upstream_rq_xx does not).
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)
TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$", re.MULTILINE)
FAMILY_SAMPLES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}


# ------------------------------------------------------------------ the dashboard and its PromQL


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def graph_panels(board: dict) -> list[dict]:
    """Every panel that queries, rows' nested panels included."""
    found = []
    for panel in board["panels"]:
        found += [p for p in panel.get("panels", [])] if panel["type"] == "row" else [panel]
    return found


def queried_metrics(expr: str) -> set[str]:
    """The metric names an expression selects, from its syntax tree (promql-parser)."""
    return _selectors(promql_parser.parse(GRAFANA_RANGES.sub("5m", expr)))


def _selectors(node: object) -> set[str]:
    if isinstance(node, promql_parser.MatrixSelector):
        node = node.vector_selector
    if isinstance(node, promql_parser.VectorSelector):
        assert node.name, f"name the metric, not only {{__name__=...}}: {node}"
        return {node.name}
    names: set[str] = set()
    for child in [getattr(node, a, None) for a in ("lhs", "rhs", "expr", "param")] + list(getattr(node, "args", ())):
        if child is not None:
            names |= _selectors(child)
    return names


def variable_metrics(board: dict) -> set[str]:
    """The metrics of the dashboard's label_values(metric, label) variables."""
    names = set()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            names.add(re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"]).group(1))
    return names


def missing_metrics(board: dict, exported: set[str]) -> dict[str, set[str]]:
    """Panel title (or variable) -> the metric names it queries that nothing exports."""
    missing = {}
    for panel in graph_panels(board):
        names = set().union(*(queried_metrics(t["expr"]) for t in panel["targets"]))
        if names - exported:
            missing[panel["title"]] = names - exported
    if variable_metrics(board) - exported:
        missing["variables"] = variable_metrics(board) - exported
    return missing


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition (None: no such series)."""
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == name and s.labels == labels), None)


def exported_metrics(text: str) -> set[str]:
    """The sample names a Prometheus text exposition serves, and those of families declared with
    no sample yet (a counter with labels nobody has incremented: no restarts so far)."""
    names = set(SAMPLE_LINE.findall(text))
    for family, kind in TYPE_LINE.findall(text):
        names |= {family + suffix for suffix in FAMILY_SAMPLES.get(kind, ("",))}
    return names


def test_the_dashboard_is_grafana_json_on_a_prometheus_datasource_variable():
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    [datasource] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"]) == ("datasource", "prometheus")
    panels = graph_panels(board)
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in panel["targets"]), panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_the_dashboard_shows_what_operators_look_for():
    exprs = [t["expr"] for p in graph_panels(dashboard()) for t in p["targets"]]
    queried = set().union(*map(queried_metrics, exprs))
    for topic, metric in {
        "requests": "llmops_grpc_requests_total", "latency": "llmops_grpc_request_duration_seconds_bucket",
        "TTFT": "llmops_inference_time_to_first_token_seconds_bucket",
        "tokens/s": "llmops_inference_output_tokens_per_second_count",
        "queue depth": "llmops_inference_queued_requests",
        "replicas per endpoint": "llmops_endpoint_ready_replicas",
        "supervisor restarts": "llmops_supervisor_restarts_total",
        "Envoy upstream requests": "envoy_cluster_upstream_rq_xx",
        "Envoy upstream latency": "envoy_cluster_upstream_rq_time_bucket",
    }.items():
        assert metric in queried, f"no panel shows {topic} ({metric})"
    assert any('code!="OK"' in e and "llmops_grpc_requests_total" in e for e in exprs), "no panel shows errors"
    for quantile in ("0.5", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile}, ") and "llmops_grpc_request_duration" in e
                   for e in exprs), f"no p{quantile} latency"


def test_a_metric_that_nobody_exports_is_reported_with_its_panel():
    board = {"panels": [{"type": "row", "panels": [{"title": "Renamed", "targets": [
        {"expr": 'histogram_quantile(0.99, sum by (le) '
                 '(rate(llmops_renamed_seconds_bucket{a=~"$x"}[$__rate_interval])))'},
        {"expr": "sum(llmops_grpc_requests_total) / on() group_left sum(up)"}]}]}],
        "templating": {"list": [{"type": "query", "query": {"query": "label_values(llmops_gone_total, endpoint)"}}]}}
    exported = {"llmops_grpc_requests_total", "up"}
    assert missing_metrics(board, exported) == {"Renamed": {"llmops_renamed_seconds_bucket"},
                                                "variables": {"llmops_gone_total"}}


def test_exported_names_are_the_samples_as_written_and_those_of_families_without_samples():
    text = ("# HELP llmops_supervisor_restarts_total Restarts.\n# TYPE llmops_supervisor_restarts_total counter\n"
            "# HELP h_seconds A histogram.\n# TYPE h_seconds histogram\n"
            "# TYPE envoy_cluster_upstream_rq_xx counter\n"
            'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="router"} 6\n'
            "up 1\n")
    assert exported_metrics(text) == {"llmops_supervisor_restarts_total", "h_seconds_bucket", "h_seconds_count",
                                      "h_seconds_sum", "envoy_cluster_upstream_rq_xx", "up"}


# ------------------------------------------------------------------ `make up`'s metrics ports


def run_local_module():  # noqa: ANN201
    path = REPO_ROOT / "deploy" / "scripts" / "run_local.py"
    spec = importlib.util.spec_from_file_location("run_local_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_up_gives_each_service_a_metrics_port_of_its_own_unless_turned_off():
    run_local = run_local_module()
    services = {"deployment": 1, "experiment": 2, "registry": 3, "router": 4, "reflection": 5}
    ports = run_local._metrics_ports(Settings(_env_file=None), services)
    assert ports == {name: {"LLMOPS_METRICS_PORT": str(9191 + i)} for i, name in enumerate(services)}
    assert run_local._metrics_ports(Settings(metrics_port=20000, _env_file=None), services)["router"] == {
        "LLMOPS_METRICS_PORT": "20003"}
    assert run_local._metrics_ports(Settings(metrics_port=0, _env_file=None), services) == {}


# ------------------------------------------------------------------ the router's queue depth, in process


class HeldPool:
    """One replica that answers a request only once `release` is set; or, with full=True,
    a replica that is always full (the admission refuses it)."""

    def __init__(self, *, full: bool = False) -> None:
        self.release = asyncio.Event()
        self.full = full

    def pick(self, addresses, exclude, *, slots=1, queue=None, queue_budget=0.0):  # noqa: ANN001, ANN201
        return None if self.full else next((a for a in addresses if a not in exclude), None)

    async def generate(self, address: str, model: str, prompt: str, sampling: Sampling,
                       request_id: str) -> AsyncIterator[Chunk]:
        await self.release.wait()
        yield Chunk("ok", final=True, prompt_tokens=3, completion_tokens=1, finish_reason="stop")


def held_service(name: str, pool: HeldPool) -> InferenceService:
    table = RouteTable()
    table.apply(deployment_pb2.WatchEndpointsResponse(kind="snapshot", endpoints=[deployment_pb2.RoutedEndpoint(
        endpoint=deployment_pb2.Endpoint(id="e1", name=name, environment="dev", status="healthy"), triton_model="llm",
        model=deployment_pb2.RevisionModel(name="m", version="1", type="chat"),
        replicas=[deployment_pb2.Replica(id="r", grpc_address="replica:1", ready=True)])]))
    experiments = ExperimentTable()
    experiments.apply(experiment_pb2.WatchExperimentsResponse(kind="snapshot"))  # none running
    return InferenceService(table=table, pool=pool, limiter=RateLimiter(0), outcomes=RecordedOutcomes(), timeout_s=30,
                            max_output_tokens=16, experiments=experiments)


def gauge(metric: str, endpoint: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"endpoint": endpoint})


async def test_a_request_counts_in_the_queue_until_its_first_token_and_in_flight_until_done():
    name, pool = f"held-{uuid.uuid4().hex[:6]}", HeldPool()
    service = held_service(name, pool)
    answer = await service.chat_stream(actor=Identity("u"), name=name, messages=[Message("user", "Hi")],
                                       sampling=SamplingRequest(max_tokens=1), buffered=True)
    chunks = answer.choices
    waiting = asyncio.ensure_future(anext(chunks))
    for _ in range(100):  # event-loop turns until the request waits on the replica
        if gauge("llmops_inference_queued_requests", name) == 1:
            break
        await asyncio.sleep(0)
    assert gauge("llmops_inference_queued_requests", name) == 1
    assert gauge("llmops_inference_in_flight_requests", name) == 1
    pool.release.set()
    assert (await waiting)[1].final
    assert gauge("llmops_inference_queued_requests", name) == 0  # the replica answered
    assert gauge("llmops_inference_in_flight_requests", name) == 1  # the request is not over yet
    with suppress(StopAsyncIteration):
        await anext(chunks)
    assert gauge("llmops_inference_in_flight_requests", name) == 0


async def test_a_request_refused_because_every_replica_is_full_counts_as_shed():
    name = f"full-{uuid.uuid4().hex[:6]}"
    service = held_service(name, HeldPool(full=True))
    answer = await service.chat_stream(actor=Identity("u"), name=name, messages=[Message("user", "Hi")],
                                       sampling=SamplingRequest(max_tokens=1), buffered=True)
    with pytest.raises(Unavailable) as refused:
        await anext(answer.choices)
    assert refused.value.reason == "ENDPOINT_BUSY"
    assert REGISTRY.get_sample_value("llmops_inference_shed_total", {"endpoint": name}) == 1
    assert gauge("llmops_inference_in_flight_requests", name) == 0
    assert gauge("llmops_inference_queued_requests", name) in (None, 0)


# ------------------------------------------------------------------ the platform, as `make up` runs it


@dataclass
class Platform:
    launcher: subprocess.Popen
    api: str
    ports: dict[str, int]
    metrics: dict[str, int]  # service process -> its /metrics port
    serving_dir: Path
    log_dir: Path  # make up's files, one per process: every line as written, where the terminal has few

    def log_lines(self) -> list[tuple[str, dict]]:
        """(process, JSON line) for every JSON line a process wrote (structlog's and Envoy's access log)."""
        lines = []
        for path in sorted(self.log_dir.glob("*.log")):
            process = path.stem.removesuffix("-access")
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    with suppress(ValueError):
                        lines.append((process, json.loads(raw)))
        return lines

    def lines_of(self, request_id: str) -> list[tuple[str, dict]]:
        return [(process, line) for process, line in self.log_lines() if line.get("request_id") == request_id]

    def scrape(self, port: int, path: str = "/metrics") -> str:
        r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        r.raise_for_status()
        return r.text




@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("observability")
    processes = [c.name for c in api.components()] + ["reflection"]  # in `make up`'s order
    ports = make_up_ports()
    first_metrics = free_port_run(len(processes))
    env = {"LLMOPS_LOG_LEVEL": "INFO", "LLMOPS_LOG_JSON": "true", "LLMOPS_METRICS_PORT": str(first_metrics),
           # Known here, so that the test can present the replicas' key (derived from it) to Triton.
           "LLMOPS_SERVICE_TOKEN": SERVICE_TOKEN,
           # The test is the trusted proxy: the X-Request-Id it sends is kept, as a load balancer's would be.
           "LLMOPS_GATEWAY_TRUSTED_PROXIES": '["127.0.0.1/32"]'}
    with make_up(root, ports, env, WAIT_S) as launcher:
        yield Platform(launcher, f"http://127.0.0.1:{ports['GATEWAY']}/llm-ops/v1", ports,
                       {name: first_metrics + i for i, name in enumerate(processes)}, root / "serving",
                       root / "log")




def deploy_echo(platform: Platform, name: str, request_id: str) -> dict:
    body = {"modelId": approved_echo_model(platform), "environment": "dev", "route": f"/llm-ops/v1/serve/{name}",
            "minReplicas": 1, "maxReplicas": 1, "autoscalePolicy": {"cpuUtilization": 70}}
    r = requests.post(f"{platform.api}/serving/endpoints", json=body, headers={**ADMIN, "X-Request-Id": request_id},
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id  # kept: the test is a trusted proxy
    endpoint_id = r.json()["data"]["id"]

    def healthy() -> dict | None:
        data = requests.get(f"{platform.api}/serving/endpoints/{endpoint_id}", headers=ADMIN, timeout=10).json()["data"]
        assert data["status"] != "failed", data
        return data if data["status"] == "healthy" else None

    return wait_for(f"endpoint {name} healthy", healthy)


@dataclass
class Echo:
    endpoint: dict
    deploy_request_id: str
    triton_log: Path


@pytest.fixture(scope="module")
def echo(platform: Platform) -> Echo:
    """An echo endpoint deployed with a chosen request id, its replica's Triton logging verbosely."""
    request_id = f"obs-deploy-{uuid.uuid4().hex}"
    endpoint = deploy_echo(platform, "echo-obs", request_id)
    state = json.loads((platform.serving_dir / endpoint["id"] / "state.json").read_text())
    [replica] = state["replicas"]
    # Triton's logging API: verbose level 1 logs each request under its id ("[request id: ...]"). Only the
    # platform may change it: it demands the replicas' key.
    key = Settings(_env_file=None, service_token=SERVICE_TOKEN).replica_key()
    r = requests.post(f"http://127.0.0.1:{replica['http_port']}/v2/logging", json={"log_verbose_level": 1},
                      headers={REPLICA_KEY_HEADER: key}, timeout=10)
    assert r.status_code == 200 and r.json()["log_verbose_level"] == 1, r.text
    return Echo(endpoint, request_id, Path(replica["log_path"]))


def chat(platform: Platform, name: str, *, request_id: str | None = None, stream: bool = False) -> requests.Response:
    headers = {"X-User-Id": "obs-user", "Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = request_id
    r = requests.post(f"{platform.api}/serve/{name}/chat", headers=headers, timeout=60, json={
        "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 3, "stream": stream})
    assert r.status_code == 200, r.text
    return r


def rpc_line(platform: Platform, process: str, method: str, request_id: str) -> dict:
    """The line the process logged for its call of method in the request (waited for: pumped through the launcher)."""
    def find() -> dict | None:
        return next((line for name, line in platform.lines_of(request_id)
                     if name == process and line.get("event") == "rpc" and line["method"].endswith(f"/{method}")), None)
    return wait_for(f"{process} logs {method} with request id {request_id}", find)


def access_line(platform: Platform, cluster: str, request_id: str) -> dict:
    def find() -> dict | None:
        return next((line for name, line in platform.lines_of(request_id)
                     if name == "envoy" and line.get("upstream_cluster") == cluster), None)
    return wait_for(f"Envoy's access log has request id {request_id} to {cluster}", find)


def reaches_triton(echo: Echo, request_id: str) -> None:
    wait_for(f"Triton logs request id {request_id}",
             lambda: f"[request id: {request_id}]" in echo.triton_log.read_text())


def test_a_deploy_is_followed_from_envoy_to_the_deployment_service_and_the_registry_it_asks(platform, echo):
    request_id = echo.deploy_request_id
    assert access_line(platform, "deployment", request_id)["path"] == "/llm-ops/v1/serving/endpoints"
    assert rpc_line(platform, "deployment", "DeployEndpoint", request_id)["user"] == "admin"
    assert rpc_line(platform, "registry", "GetModel", request_id)["code"] == "OK"  # the deployment service's call
    # The endpoint's controller outlives the call that created it: its lines are its own, not that request's.
    started = [line for _, line in platform.log_lines() if line.get("event") == "replica started"
               and line.get("endpoint") == echo.endpoint["id"]]
    assert started and all(line.get("request_id") != request_id for line in started)


def test_a_chat_is_followed_from_envoy_through_the_router_to_triton(platform, echo):
    request_id = f"obs-chat-{uuid.uuid4().hex}"
    r = chat(platform, "echo-obs", request_id=request_id)
    assert r.headers["x-request-id"] == request_id
    assert r.json()["data"]["id"] == f"chatcmpl-{request_id}"
    assert access_line(platform, "router", request_id)["status"] == 200
    assert rpc_line(platform, "router", "Chat", request_id)["user"] == "obs-user"
    reaches_triton(echo, request_id)


def test_a_stream_is_followed_by_the_id_envoy_generated_and_returned(platform, echo):
    r = chat(platform, "echo-obs", stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    request_id = r.headers["x-request-id"]
    uuid.UUID(request_id)  # Envoy's own
    assert f'"id":"chatcmpl-{request_id}"' in r.text.split("\n\n")[0]  # the stream's chunks carry it too
    assert rpc_line(platform, "router", "ChatStream", request_id)["code"] == "OK"
    access_line(platform, "router", request_id)
    reaches_triton(echo, request_id)


def test_an_experiment_is_followed_into_the_registry_and_deployment_calls_it_makes(platform, echo):
    templates = []
    for content in ("Answer briefly.", "Answer kindly."):
        r = requests.post(f"{platform.api}/prompts/templates", headers=RESEARCHER, timeout=30, json={
            "name": f"obs-{uuid.uuid4().hex[:6]}", "content": content, "modelType": "chat", "endpoint": "echo-obs"})
        assert r.status_code == 200, r.text
        templates.append(r.json()["data"]["id"])
    request_id = f"obs-experiment-{uuid.uuid4().hex}"
    r = requests.post(f"{platform.api}/prompts/experiments", headers={**RESEARCHER, "X-Request-Id": request_id},
                      timeout=30, json={"templateAId": templates[0], "templateBId": templates[1], "allocation": 50,
                                        "metric": "latency_ms"})
    assert r.status_code == 200, r.text
    assert rpc_line(platform, "experiment", "CreateExperiment", request_id)["user"] == "rita"
    assert rpc_line(platform, "registry", "GetPromptTemplate", request_id)["code"] == "OK"
    assert rpc_line(platform, "deployment", "ListEndpoints", request_id)["code"] == "OK"


def test_every_metric_on_the_dashboard_is_exported_by_the_platform(platform, echo):
    chat(platform, "echo-obs", request_id=f"obs-metrics-{uuid.uuid4().hex}")  # inference metrics with samples
    texts = {name: platform.scrape(port) for name, port in platform.metrics.items()}
    texts["supervisor"] = platform.scrape(platform.ports["SUPERVISOR_METRICS"])
    texts["envoy"] = platform.scrape(platform.ports["GATEWAY_ADMIN"], "/stats/prometheus")
    exported = set().union(*map(exported_metrics, texts.values()))
    assert missing_metrics(dashboard(), exported) == {}
    # Each process serves what is its own on its own port.
    router = exported_metrics(texts["router"])
    assert {"llmops_inference_queued_requests", "llmops_inference_in_flight_requests",
            "llmops_inference_time_to_first_token_seconds_bucket", "llmops_inference_output_tokens_per_second_bucket"
            } <= router
    assert "llmops_endpoint_ready_replicas" not in router
    assert sample_value(texts["deployment"], "llmops_endpoint_ready_replicas", endpoint="echo-obs",
                        environment="dev") == 1
    assert sample_value(texts["router"], "llmops_grpc_requests_total", service="router", method="Chat", code="OK") >= 1
    assert sample_value(texts["deployment"], "llmops_grpc_requests_total", service="deployment",
                        method="DeployEndpoint", code="OK") == 1
    assert sample_value(texts["registry"], "llmops_grpc_requests_total", service="registry", method="GetModel",
                        code="OK") >= 1
    assert sample_value(texts["envoy"], "envoy_cluster_upstream_rq_total", envoy_cluster_name="router") >= 1


def test_replicas_per_endpoint_follow_a_deploy_and_a_delete(platform, echo):
    name = f"echo-gone-{uuid.uuid4().hex[:6]}"
    endpoint = deploy_echo(platform, name, f"obs-deploy-{uuid.uuid4().hex}")
    ready = {"endpoint": name, "environment": "dev"}
    text = platform.scrape(platform.metrics["deployment"])
    assert sample_value(text, "llmops_endpoint_ready_replicas", **ready) == 1
    assert sample_value(text, "llmops_endpoint_desired_replicas", **ready) == 1
    r = requests.delete(f"{platform.api}/serving/endpoints/{endpoint['id']}", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    text = platform.scrape(platform.metrics["deployment"])
    assert f'endpoint="{name}"' not in text  # a deleted endpoint leaves no series behind
    assert sample_value(text, "llmops_endpoint_ready_replicas", endpoint="echo-obs", environment="dev") == 1


# Envoy's stats and readiness for Prometheus and probes, without the admin interface ----------------------

def test_the_stats_port_answers_only_ready_and_prometheus(tmp_path):
    from ..helpers import start_envoy

    settings = Settings(_env_file=None, gateway_stats_port=free_port())
    gateway = start_envoy(settings, {}, tmp_path)
    stats = f"http://127.0.0.1:{settings.gateway_stats_port}"
    try:
        assert requests.get(f"{stats}/ready", timeout=10).text.strip() == "LIVE"
        scraped = requests.get(f"{stats}/stats/prometheus", timeout=10)
        assert scraped.status_code == 200 and "envoy_server_live" in exported_metrics(scraped.text)
        # The admin interface's other pages (the config holds the service credential) and its writes are not there.
        for method, path in [("GET", "/config_dump"), ("POST", "/quitquitquit"), ("POST", "/ready"),
                             ("GET", "/stats"), ("GET", "/stats/prometheus/../../config_dump")]:
            assert requests.request(method, stats + path, timeout=10).status_code == 404, (method, path)
        assert requests.get(f"http://127.0.0.1:{gateway.admin_port}/ready", timeout=10).status_code == 200
    finally:
        gateway.stop()
