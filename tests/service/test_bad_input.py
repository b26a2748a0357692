"""Bad input through the gateway: a clear envelope error, the right status,
and nothing written (the tables are unchanged)."""

from __future__ import annotations

import uuid

import pytest
import requests

from ..helpers import ADMIN, REVIEWER, assert_envelope, model_body, register, unique

TABLES = ("registry_models", "registry_prompt_templates", "registry_audit_records")


@pytest.fixture
def unchanged(registry):
    """Asserts, after the test, that no registry table gained or lost a row."""
    before = {t: registry.count(t) for t in TABLES}
    yield
    assert {t: registry.count(t) for t in TABLES} == before


def post_model(gateway, body, headers=ADMIN):
    return requests.post(f"{gateway.api}/catalog/models", json=body, headers=headers)


@pytest.mark.parametrize("field,label", [("name", "name"), ("version", "version"), ("type", "type"),
                                         ("runtime", "runtime"), ("artifactUri", "artifactUri"),
                                         ("ownerTeam", "ownerTeam")])
def test_missing_required_field(gateway, unchanged, field, label):
    body = model_body()
    del body[field]
    error = assert_envelope(post_model(gateway, body), 400, "error")
    assert label in error["message"]
    assert error["data"] is None


@pytest.mark.parametrize("field,value", [("type", "vision"), ("runtime", "onnx"), ("status", "approved"),
                                         ("status", "bogus")])
def test_invalid_enum_values_on_create(gateway, unchanged, field, value):
    error = assert_envelope(post_model(gateway, model_body(**{field: value})), 400, "error")
    assert field in error["message"]


@pytest.mark.parametrize("body,needle", [
    ({"name": "has spaces"}, "name"),
    ({"name": "x" * 200}, "name"),
    ({"artifactUri": "not a uri"}, "artifactUri"),
    ({"metadata": "not-an-object"}, ""),
    ({"version": ["a", "list"]}, ""),
])
def test_invalid_values_on_create(gateway, unchanged, body, needle):
    error = assert_envelope(post_model(gateway, model_body(**body)), 400, "error")
    assert needle in error["message"]


def test_invalid_status_value_on_update(gateway):
    model = register(gateway)
    r = requests.patch(f"{gateway.api}/catalog/models/{model['id']}/status", json={"status": "shipped"},
                       headers=REVIEWER)
    assert "status must be one of" in assert_envelope(r, 400, "error")["message"]
    got = requests.get(f"{gateway.api}/catalog/models/{model['id']}", headers=ADMIN).json()["data"]
    assert got["status"] == "draft" and got["updatedAt"] == model["updatedAt"]


def test_invalid_transition_is_a_conflict(gateway, registry):
    model = register(gateway)
    audits = registry.count("registry_audit_records")
    r = requests.patch(f"{gateway.api}/catalog/models/{model['id']}/status", json={"status": "approved"},
                       headers=REVIEWER)
    assert "cannot move model from draft to approved" in assert_envelope(r, 409, "error")["message"]
    assert registry.count("registry_audit_records") == audits


def test_invalid_enum_filter(gateway):
    r = requests.get(f"{gateway.api}/catalog/models?type=vision", headers=ADMIN)
    assert "type must be one of" in assert_envelope(r, 400, "error")["message"]


@pytest.mark.parametrize("path", ["/catalog/models/not-a-uuid", "/prompts/templates/123"])
def test_malformed_uuid(gateway, path):
    error = assert_envelope(requests.get(f"{gateway.api}{path}", headers=ADMIN), 400, "error")
    assert "not a valid UUID" in error["message"]


def test_malformed_uuid_on_update_writes_nothing(gateway, unchanged):
    r = requests.patch(f"{gateway.api}/catalog/models/xyz/status", json={"status": "approved"}, headers=REVIEWER)
    assert_envelope(r, 400, "error")


@pytest.mark.parametrize("path", ["/catalog/models/{id}", "/prompts/templates/{id}"])
def test_unknown_id(gateway, path):
    missing = str(uuid.uuid4())
    error = assert_envelope(requests.get(f"{gateway.api}{path.format(id=missing)}", headers=ADMIN), 404, "error")
    assert missing in error["message"]


def test_unknown_id_on_update_writes_nothing(gateway, unchanged):
    r = requests.patch(f"{gateway.api}/catalog/models/{uuid.uuid4()}/status", json={"status": "approved"},
                       headers=REVIEWER)
    assert_envelope(r, 404, "error")


def test_oversized_body(gateway, unchanged):
    body = model_body(metadata={"blob": "x" * 2_000_000})
    error = assert_envelope(post_model(gateway, body), 413, "error")
    assert error["message"]


def test_metadata_over_the_catalog_limit(gateway, unchanged):
    body = model_body(metadata={"blob": "x" * 100_000})
    assert "metadata is larger" in assert_envelope(post_model(gateway, body), 400, "error")["message"]


@pytest.mark.parametrize("raw", ['{"name": "x",', "not json at all", '["a", "list"]', '{"name": 12}'])
def test_malformed_json(gateway, unchanged, raw):
    r = requests.post(f"{gateway.api}/catalog/models", data=raw,
                      headers={**ADMIN, "Content-Type": "application/json"})
    assert assert_envelope(r, 400, "error")["message"]


def test_invalid_template_syntax(gateway, unchanged):
    r = requests.post(f"{gateway.api}/prompts/templates", headers=ADMIN,
                      json={"name": unique("t"), "content": "{% if x %}unclosed", "modelType": "chat"})
    assert "not a valid Jinja2 template" in assert_envelope(r, 400, "error")["message"]


def test_invalid_template_endpoint_name(gateway, unchanged):
    r = requests.post(f"{gateway.api}/prompts/templates", headers=ADMIN,
                      json={"name": unique("t"), "content": "x", "modelType": "chat", "endpoint": "Bad Name!"})
    assert "endpoint must be a lowercase DNS label" in assert_envelope(r, 400, "error")["message"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/llm-ops/v1/nope"),
    ("GET", "/llm-ops/v1/catalog"),
    ("DELETE", "/llm-ops/v1/catalog/models"),
    ("GET", "/elsewhere"),
    ("GET", "/"),
])
def test_unknown_path(gateway, method, path):
    error = assert_envelope(requests.request(method, f"{gateway.url}{path}", headers=ADMIN), 404, "error")
    assert error["message"]


def test_internal_methods_are_not_exposed(gateway):
    r = requests.post(f"{gateway.url}/llmops.v1.DeploymentService/WatchEndpoints", data=b"",
                      headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 404


def test_bad_page_size(gateway):
    r = requests.get(f"{gateway.api}/catalog/models?pageSize=-1", headers=ADMIN)
    assert "pageSize" in assert_envelope(r, 400, "error")["message"]


def test_service_not_running_is_503_envelope(gateway):
    # The control-plane gateway of these tests has no router behind it.
    r = requests.post(f"{gateway.api}/serve/chat-model/chat", json={"messages": []}, headers=ADMIN)
    assert_envelope(r, 503, "error")
