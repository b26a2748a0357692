"""Unit tests: domain rules, identity parsing, the access table, pagination. No I/O."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from registry.domain import Model, ModelStatus, ModelType, Runtime, check_template, check_transition
from shared import pagination
from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from shared.identity import AccessTable, Identity, identity_from_metadata
from shared.validation import endpoint_name, parse_uuid

NOW = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)


def model(status: ModelStatus, created_by: str = "rita") -> Model:
    return Model(id=uuid.uuid4(), name="m", version="1", type=ModelType.CHAT, runtime=Runtime.LLAMACPP,
                 artifact_uri="pkg://x", owner_team="t", metadata={}, status=status, created_by=created_by,
                 reviewed_by="", review_notes="", created_at=NOW, updated_at=NOW)


@pytest.mark.parametrize("current,target,ok", [
    ("draft", "pending_review", True),
    ("draft", "approved", False),
    ("draft", "rejected", False),
    ("pending_review", "approved", True),
    ("pending_review", "rejected", True),
    ("pending_review", "draft", True),
    ("rejected", "pending_review", True),
    ("rejected", "approved", False),
    ("approved", "draft", False),
    ("approved", "rejected", False),
    ("approved", "approved", False),
])
def test_status_transitions(current, target, ok):
    if ok:
        check_transition(model(ModelStatus(current)), ModelStatus(target), actor="victor")
    else:
        with pytest.raises(FailedPrecondition):
            check_transition(model(ModelStatus(current)), ModelStatus(target), actor="victor")


@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_nobody_reviews_their_own_model(decision):
    with pytest.raises(PermissionDenied):
        check_transition(model(ModelStatus.PENDING_REVIEW), ModelStatus(decision), actor="rita")


def test_submitting_your_own_model_is_fine():
    check_transition(model(ModelStatus.DRAFT), ModelStatus.PENDING_REVIEW, actor="rita")


@pytest.mark.parametrize("content", ["{{ x ", "{% for %}", "{% if a %}no end", "{{ a | }}"])
def test_template_syntax_errors(content):
    with pytest.raises(InvalidArgument, match="not a valid Jinja2 template"):
        check_template(content)


def test_template_that_parses_passes():
    assert check_template("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_identity_parsing_ignores_unknown_roles_and_case():
    who = identity_from_metadata({"x-user-id": " bob ", "x-user-roles": "Admin, wizard ,viewer,"})
    assert who == Identity("bob", frozenset({"admin", "viewer"}))


def test_access_table_reads_the_proto_options():
    table = AccessTable(["llmops.v1.RegistryService", "llmops.v1.InferenceService"])
    create = "/llmops.v1.RegistryService/CreateModel"
    assert set(table.rule(create).roles) == {"researcher", "admin"}
    assert table.rule(create).success_message == "Model registered successfully"
    with pytest.raises(Unauthenticated):
        table.check(create, Identity(""))
    with pytest.raises(PermissionDenied):
        table.check(create, Identity("u", frozenset({"viewer"})))
    assert table.check(create, Identity("u", frozenset({"researcher"})))
    assert table.check("/llmops.v1.InferenceService/Health", Identity("")).public
    with pytest.raises(PermissionDenied):
        table.check("/llmops.v1.RegistryService/NoSuchMethod", Identity("u", frozenset({"admin"})))


def test_page_tokens_round_trip_and_reject_forgery():
    q = {"type": "chat"}
    token = pagination.next_token(0, 10, 11, q)
    assert pagination.decode_token(token, q) == 10
    assert pagination.next_token(0, 10, 10, q) == ""
    for bad in ["garbage!", pagination.encode_token(-5, q)]:
        with pytest.raises(InvalidArgument):
            pagination.decode_token(bad, q)
    with pytest.raises(InvalidArgument):
        pagination.decode_token(token, {"type": "embedding"})
    with pytest.raises(InvalidArgument):
        pagination.page_size(-1)
    assert pagination.page_size(0) == 100 and pagination.page_size(10_000) == 1000


@pytest.mark.parametrize("name,ok", [("chat-model", True), ("a", True), ("Chat", False), ("-x", False),
                                     ("x" * 64, False), ("has_underscore", False), ("ok-1", True)])
def test_endpoint_names(name, ok):
    if ok:
        assert endpoint_name(name) == name
    else:
        with pytest.raises(InvalidArgument):
            endpoint_name(name)


def test_uuid_parsing():
    assert str(parse_uuid("550e8400-e29b-41d4-a716-446655440000", "id")) == "550e8400-e29b-41d4-a716-446655440000"
    with pytest.raises(InvalidArgument, match="not a valid UUID"):
        parse_uuid("550e8400", "id")
    with pytest.raises(InvalidArgument, match="required"):
        parse_uuid("", "id")
