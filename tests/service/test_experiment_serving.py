"""Experiments on live traffic through the real Envoy and the real router, with the control plane's
own services (a deployment service on a runtime double whose replicas are one FakeTriton, and an
experiment service this module restarts), on SQLite and on PostgreSQL: a deleted endpoint's
experiment is stopped, and never takes over a new endpoint of the same name, even when the
experiment service was down at the delete; and only the platform's or the model's failures count
against a variant, not the errors a caller causes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import requests
from sqlalchemy import Engine, text
from tritonclient.grpc import service_pb2_grpc

from shared.settings import Settings

from ..conftest import ServiceHandle
from ..fakes import FakeRuntime, FakeTriton
from ..helpers import (
    ADMIN, RESEARCHER, Gateway, LoopThread, approved_echo_model, assert_envelope, assert_refused, deploy, deploy_body,
    free_port, split_address, start_envoy, unique, wait_for,
)

WAIT_S = 30  # for a watch to carry a change, or outcomes to arrive: a bound on waiting, not a speed assertion
CALLER_SYSTEM = "You answer in French."
TEMPLATE_B = "You are template B."


@dataclass
class Serving:
    gateway: Gateway
    triton: FakeTriton
    router: object  # router.server.Router
    settings: Settings
    loop_thread: LoopThread
    experiment_engine: Engine
    experiments: object = None  # experiment.server.RunningExperimentService, while it runs

    def start_experiments(self) -> None:
        from experiment.server import start
        self.experiments = self.loop_thread.run(start(self.settings, engine=self.experiment_engine,
                                                      port=self.settings.experiment_port))

    def stop_experiments(self) -> None:
        self.loop_thread.run(self.experiments.stop(0))
        self.experiments = None


@pytest.fixture(scope="module")
def serving(settings: Settings, registry: ServiceHandle, own_database: str, loop_thread: LoopThread,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    from deployment.server import prepare_database as deployment_database
    from deployment.server import start as start_deployment
    from experiment.server import prepare_database as experiment_database
    from router.server import start as start_router

    triton = FakeTriton()

    async def serve_triton() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(triton, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    triton_server, triton_port = loop_thread.run(serve_triton())
    runtime = FakeRuntime()
    runtime.replica_address = f"127.0.0.1:{triton_port}"
    local = settings.model_copy(update={
        "database_url": Settings(database_url=own_database, _env_file=None).database_url,
        "reconcile_interval_s": 0.2, "rate_limit_per_minute": 0, "router_request_timeout_s": 10,
        "registry_port": split_address(registry.address)[1], "experiment_port": free_port(),
        "outcome_journal_dir": tmp_path_factory.mktemp("serving-outcomes")})
    deployment_engine, experiment_engine = deployment_database(local), experiment_database(local)
    running, deployment = loop_thread.run(start_deployment(local, engine=deployment_engine, runtime=runtime, port=0))
    local = local.model_copy(update={"deployment_port": running.port})
    router = loop_thread.run(start_router(local, port=0))
    serving = Serving(None, triton, router, local, loop_thread, experiment_engine)
    serving.start_experiments()
    serving.gateway = start_envoy(local, {"registry": split_address(registry.address),
                                          "deployment": ("127.0.0.1", running.port),
                                          "experiment": ("127.0.0.1", local.experiment_port),
                                          "router": ("127.0.0.1", router.running.port)},
                                  tmp_path_factory.mktemp("serving-gateway"))
    try:
        yield serving
    finally:
        serving.gateway.stop()
        if serving.experiments is not None:
            serving.stop_experiments()
        loop_thread.run(router.running.stop(0))
        loop_thread.run(router.close())
        loop_thread.run(running.stop(0))
        loop_thread.run(deployment.close())
        loop_thread.run(triton_server.stop(0))
        deployment_engine.dispose()
        experiment_engine.dispose()


def deploy_routed(serving: Serving, name: str, model_id: str) -> dict:
    """A healthy endpoint `name` that the router routes to its replica."""
    endpoint = assert_envelope(deploy(serving.gateway, deploy_body(model_id, name=name)), 200, "success")["data"]
    wait_for(f"the router routes {name} to endpoint {endpoint['id']}", lambda: (
        route := serving.router.table.get(name)) is not None and route.endpoint_id == endpoint["id"]
        and route.replicas, WAIT_S)
    return endpoint


def delete(serving: Serving, endpoint: dict) -> None:
    r = requests.delete(f"{serving.gateway.api}/serving/endpoints/{endpoint['id']}", headers=ADMIN)
    assert_envelope(r, 200, "success")
    wait_for(f"the router drops {endpoint['name']}", lambda: serving.router.table.get(endpoint["name"]) is None,
             WAIT_S)


def start_experiment(serving: Serving, name: str, *, metric: str = "latency_ms") -> dict:
    """A running chat experiment on endpoint `name` sending everyone to B, once the router applies it."""
    ids = []
    for content in ("You are template A.", TEMPLATE_B):
        r = requests.post(f"{serving.gateway.api}/prompts/templates", headers=RESEARCHER, json={
            "name": unique("served"), "content": content, "modelType": "chat", "endpoint": name})
        ids.append(assert_envelope(r, 200, "success")["data"]["id"])
    r = requests.post(f"{serving.gateway.api}/prompts/experiments", headers=RESEARCHER,
                      json={"templateAId": ids[0], "templateBId": ids[1], "allocation": 100, "metric": metric})
    e = assert_envelope(r, 200, "success")["data"]
    wait_for(f"the router applies experiment {e['id']}", lambda: applied(serving, e["id"]), WAIT_S)
    return e


def applied(serving: Serving, experiment_id: str) -> bool:
    return any(a.id == experiment_id for a in serving.router.experiments.by_endpoint.values())


def get_experiment(serving: Serving, experiment_id: str) -> dict:
    r = requests.get(f"{serving.gateway.api}/prompts/experiments/{experiment_id}", headers=ADMIN)
    return assert_envelope(r, 200, "success")["data"]


def chat(serving: Serving, name: str, user: str = "ann") -> requests.Response:
    body = {"messages": [{"role": "system", "content": CALLER_SYSTEM}, {"role": "user", "content": "Hi"}],
            "max_tokens": 4}
    return requests.post(f"{serving.gateway.api}/serve/{name}/chat", json=body,
                         headers={"X-User-Id": user, "X-User-Roles": "viewer"}, timeout=30)


def openai_chat(serving: Serving, name: str, user: str = "ann", **extra) -> requests.Response:
    body = {"model": name, "messages": [{"role": "system", "content": CALLER_SYSTEM},
                                        {"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}
    return requests.post(f"{serving.gateway.url}/v1/chat/completions", json=body,
                         headers={"X-User-Id": user, "X-User-Roles": "viewer"}, timeout=30)


def served_without_experiment(serving: Serving, name: str) -> None:
    """The caller's own system prompt reaches the model, and no experiment is named, in the body or headers."""
    data = assert_envelope(chat(serving, name), 200, "success")["data"]
    assert "experiment" not in data, data
    assert CALLER_SYSTEM in serving.triton.prompts[-1] and TEMPLATE_B not in serving.triton.prompts[-1]
    r = openai_chat(serving, name)
    assert r.status_code == 200, r.text
    assert not [h for h in r.headers if h.lower().startswith("x-llmops-experiment")], r.headers
    assert CALLER_SYSTEM in serving.triton.prompts[-1] and TEMPLATE_B not in serving.triton.prompts[-1]


def stopped_by_the_delete(serving: Serving, e: dict) -> None:
    got = wait_for(f"experiment {e['id']} stopped", lambda: (
        got := get_experiment(serving, e["id"]))["status"] == "stopped" and got, WAIT_S)
    assert got["winnerTemplateId"] == "" and got["concludedAt"]
    r = requests.get(f"{serving.gateway.api}/prompts/audit-records", params={"resourceId": e["id"]}, headers=ADMIN)
    records = assert_envelope(r, 200, "success")["data"]["records"]
    assert [r["action"] for r in records] == ["StopExperiment", "CreateExperiment"]
    assert (records[0]["before"]["status"], records[0]["after"]["status"]) == ("running", "stopped")
    assert records[0]["after"]["winner_template_id"] == ""


def test_deleting_an_endpoint_stops_its_experiment_and_a_new_endpoint_of_the_name_is_not_taken_over(serving):
    name, model = unique("ab"), approved_echo_model(serving.gateway)
    old = deploy_routed(serving, name, model)
    e = start_experiment(serving, name)
    served = assert_envelope(chat(serving, name), 200, "success")["data"]
    assert served["experiment"]["variant"] == "B" and TEMPLATE_B in serving.triton.prompts[-1]

    delete(serving, old)
    stopped_by_the_delete(serving, e)
    new = deploy_routed(serving, name, model)
    wait_for("the router lets go of the stopped experiment", lambda: not applied(serving, e["id"]), WAIT_S)
    served_without_experiment(serving, name)

    again = start_experiment(serving, name)
    assert again["endpointId"] == new["id"] != old["id"]


def test_the_stop_survives_the_experiment_service_being_down_at_the_delete(serving):
    name, model = unique("ab"), approved_echo_model(serving.gateway)
    old = deploy_routed(serving, name, model)
    e = start_experiment(serving, name)

    serving.stop_experiments()
    try:
        delete(serving, old)
        deploy_routed(serving, name, model)
        # The router still holds the experiment as running (nothing told it otherwise), and still
        # does not apply it: it was made on the deleted endpoint, not on this one.
        assert applied(serving, e["id"])
        served_without_experiment(serving, name)
    finally:
        serving.start_experiments()
    stopped_by_the_delete(serving, e)
    start_experiment(serving, name)


def outcome_stored(serving: Serving, request_id: str) -> bool:
    with serving.experiment_engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM experiment_outcomes WHERE request_id = :r"),
                                  {"r": request_id}).scalar_one() == 1


def test_errors_the_caller_causes_do_not_count_against_a_variant_and_a_failure_of_the_model_does(serving):
    name = unique("ab")
    deploy_routed(serving, name, approved_echo_model(serving.gateway))
    e = start_experiment(serving, name, metric="error_rate")  # everyone on B
    for user in ("u1", "u2", "u3"):  # the model gives no log-probabilities: the caller asked for what it cannot
        assert_refused(openai_chat(serving, name, user, logprobs=True), "logprobs")
    for user in ("u1", "u2"):
        assert openai_chat(serving, name, user).status_code == 200
    serving.triton.behaviour = "model_died"
    try:
        failed = openai_chat(serving, name, "u3")
    finally:
        serving.triton.behaviour = "answers"
    assert failed.status_code == 503, failed.text
    # Outcomes are delivered in the order of the requests: once the last one is stored, all are.
    wait_for("the last request's outcome is stored", lambda: outcome_stored(serving, failed.headers["x-request-id"]),
             WAIT_S)
    b = next(v for v in get_experiment(serving, e["id"])["variants"] if v["variant"] == "B")
    assert (b["count"], b["errors"], b["errorRate"]) == ("3", "1", pytest.approx(1 / 3)), b


def test_experiments_from_before_binding_are_bound_to_the_live_endpoint_of_their_name_or_stopped(serving):
    """Rows the 0002 migration left unbound: the first snapshot of the endpoint watch decides them."""
    from sqlmodel import Session

    from experiment.repository import ExperimentRow

    name = unique("ab")
    live = deploy_routed(serving, name, approved_echo_model(serving.gateway))
    rows = {endpoint: ExperimentRow(template_a_id="ta", template_b_id="tb", template_a_content="A",
                                    template_b_content="B", allocation=50, metric="latency_ms", endpoint=endpoint,
                                    model_type="chat", status="running", created_by="rita")
            for endpoint in (name, unique("gone"))}
    serving.stop_experiments()
    try:
        with Session(serving.experiment_engine) as session:
            session.add_all(rows.values())
            session.commit()
            ids = {endpoint: str(row.id) for endpoint, row in rows.items()}
    finally:
        serving.start_experiments()
    bound, gone = (ids[endpoint] for endpoint in rows)
    wait_for("the unbound experiments decided", lambda: get_experiment(serving, gone)["status"] == "stopped", WAIT_S)
    assert (get_experiment(serving, bound)["status"], get_experiment(serving, bound)["endpointId"]) == (
        "running", live["id"])
    wait_for("the router applies the bound one", lambda: applied(serving, bound), WAIT_S)
