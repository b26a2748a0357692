"""The catalog through the real Envoy: REST/JSON in, envelope out."""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

from ..helpers import ADMIN, RESEARCHER, REVIEWER, assert_envelope, model_body, register, unique

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def test_register_model_answers_an_envelope_with_camel_case_fields(gateway):
    r = requests.post(f"{gateway.api}/catalog/models", json=model_body(), headers=RESEARCHER)
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Model registered successfully"
    data = body["data"]
    uuid.UUID(data["id"])
    assert {"id", "name", "version", "type", "runtime", "artifactUri", "ownerTeam", "status", "metadata",
            "createdBy", "createdAt", "updatedAt"} <= set(data)
    assert not any("_" in key for key in data), data
    assert data["status"] == "draft"
    assert data["metadata"] == {"chat_template": "chatml", "context_length": 8192}
    for field in ("createdAt", "updatedAt"):
        assert RFC3339.match(data[field]), data[field]
        datetime.fromisoformat(data[field].replace("Z", "+00:00"))


def test_model_moves_through_the_workflow_and_reads_back(gateway):
    model = register(gateway)
    url = f"{gateway.api}/catalog/models/{model['id']}"
    r = requests.patch(f"{url}/status", json={"status": "pending_review"}, headers=REVIEWER)
    assert assert_envelope(r, 200, "success")["data"]["status"] == "pending_review"
    r = requests.patch(f"{url}/status", json={"status": "approved", "notes": "evals pass"}, headers=REVIEWER)
    body = assert_envelope(r, 200, "success")
    assert body["message"] == "Model status updated successfully"
    assert body["data"]["reviewedBy"] == "victor"

    got = assert_envelope(requests.get(url, headers=ADMIN), 200, "success")
    assert got["data"]["status"] == "approved"
    assert got["data"]["reviewNotes"] == "evals pass"
    assert got["message"] == ""


def test_of_ten_concurrent_reviews_exactly_one_decides(gateway):
    """On SQLite too, where SELECT ... FOR UPDATE locks nothing: each write transaction takes the
    database's write lock as it begins (shared/db.py), so a check and its write are one step."""
    model = register(gateway, status="pending_review")
    url = f"{gateway.api}/catalog/models/{model['id']}"
    decisions = ["approved", "rejected"] * 5  # alternating: two decisions could both "win"
    start = threading.Barrier(len(decisions))

    def one(status: str) -> requests.Response:
        start.wait()
        return requests.patch(f"{url}/status", json={"status": status}, headers=REVIEWER, timeout=60)

    with ThreadPoolExecutor(len(decisions)) as pool:
        answers = list(pool.map(one, decisions))
    assert sorted(r.status_code for r in answers) == [200] + [409] * 9, [r.text for r in answers]
    [decided] = [r.json()["data"]["status"] for r in answers if r.status_code == 200]
    assert assert_envelope(requests.get(url, headers=ADMIN), 200, "success")["data"]["status"] == decided
    r = requests.get(f"{gateway.api}/catalog/audit-records", params={"resourceId": model["id"]}, headers=ADMIN)
    actions = [record["action"] for record in assert_envelope(r, 200, "success")["data"]["records"]]
    assert actions == ["UpdateModelStatus", "CreateModel"], actions  # the one decision


def test_self_approval_is_forbidden(gateway):
    model = register(gateway, status="pending_review")
    r = requests.patch(f"{gateway.api}/catalog/models/{model['id']}/status", json={"status": "approved"},
                       headers={"X-User-Id": "rita", "X-User-Roles": "researcher,reviewer"})
    body = assert_envelope(r, 403, "error")
    assert "separation of duties" in body["message"]
    assert body["data"] is None


def test_list_filters_by_type_status_and_owner_team(gateway):
    team = unique("team")
    chat = register(gateway, ownerTeam=team, type="chat")
    emb = register(gateway, ownerTeam=team, type="embedding", runtime="embedding", status="pending_review")
    other = register(gateway, type="chat")

    def ids(query: str) -> set[str]:
        r = requests.get(f"{gateway.api}/catalog/models?{query}", headers=ADMIN)
        return {m["id"] for m in assert_envelope(r, 200, "success")["data"]["models"]}

    assert ids(f"ownerTeam={team}") == {chat["id"], emb["id"]}
    assert ids(f"ownerTeam={team}&type=embedding") == {emb["id"]}
    assert ids(f"ownerTeam={team}&status=draft") == {chat["id"]}
    assert ids(f"ownerTeam={team}&type=chat&status=pending_review") == set()
    everything = ids("type=chat")
    assert {chat["id"], other["id"]} <= everything and emb["id"] not in everything
    assert ids("status=pending_review") >= {emb["id"]}


def test_list_answers_next_page_token(gateway):
    team = unique("team")
    for _ in range(3):
        register(gateway, ownerTeam=team)
    r = requests.get(f"{gateway.api}/catalog/models?ownerTeam={team}&pageSize=2", headers=ADMIN)
    data = assert_envelope(r, 200, "success")["data"]
    assert len(data["models"]) == 2 and data["nextPageToken"]
    r = requests.get(f"{gateway.api}/catalog/models", params={"ownerTeam": team, "pageSize": 2,
                                                             "pageToken": data["nextPageToken"]}, headers=ADMIN)
    rest = assert_envelope(r, 200, "success")["data"]
    assert len(rest["models"]) == 1 and rest["nextPageToken"] == ""


def test_prompt_templates_through_the_gateway(gateway):
    name = unique("support")
    body = {"name": name, "content": "You are a {{ tone }} assistant.", "modelType": "chat", "endpoint": "chat-model"}
    r = requests.post(f"{gateway.api}/prompts/templates", json=body, headers=RESEARCHER)
    created = assert_envelope(r, 200, "success")["data"]
    assert (created["version"], created["endpoint"], created["modelType"]) == (1, "chat-model", "chat")
    r = requests.get(f"{gateway.api}/prompts/templates/{created['id']}", headers=ADMIN)
    assert assert_envelope(r, 200, "success")["data"]["content"] == body["content"]
    r = requests.get(f"{gateway.api}/prompts/templates?name={name}", headers=ADMIN)
    assert [t["id"] for t in assert_envelope(r, 200, "success")["data"]["templates"]] == [created["id"]]


def test_request_id_is_returned(gateway):
    r = requests.get(f"{gateway.api}/catalog/models", headers=ADMIN)
    assert r.headers.get("x-request-id")
