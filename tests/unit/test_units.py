"""Unit tests: domain rules, identity parsing, the access table, pagination. No I/O."""

from __future__ import annotations

import asyncio
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


def _pages(sizes: list[int], page_size: int, q: dict) -> list[list[int]]:
    """Every page of a list whose items weigh `sizes` bytes, following the tokens."""
    from google.protobuf import wrappers_pb2

    def fetch(*, offset: int, limit: int) -> list[int]:
        return list(range(len(sizes)))[offset:offset + limit]

    pages, token = [], ""
    while True:
        page, token = asyncio.run(pagination.fetch_page(
            fetch, lambda i: wrappers_pb2.StringValue(value=f"{i:08d}".ljust(sizes[i], "x")),
            requested_size=page_size, token=token, query=q))
        pages.append([int(m.value[:8]) for m in page])
        if not token:
            return pages


def test_page_tokens_round_trip_and_reject_forgery():
    q = {"type": "chat"}
    assert _pages([10] * 25, 10, q) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert _pages([10] * 20, 10, q) == [list(range(10)), list(range(10, 20))]  # no empty last page
    token = pagination.encode_token(10, q)
    assert pagination.decode_token(token, q) == 10
    for bad in ["garbage!", pagination.encode_token(-5, q)]:
        with pytest.raises(InvalidArgument):
            pagination.decode_token(bad, q)
    with pytest.raises(InvalidArgument):
        pagination.decode_token(token, {"type": "embedding"})
    with pytest.raises(InvalidArgument):
        pagination.page_size(-1)
    assert pagination.page_size(0) == 100 and pagination.page_size(10_000) == 1000


def test_a_page_of_large_items_ends_early_and_the_next_page_goes_on():
    mib = pagination.MAX_PAGE_BYTES
    # Three items of 0.4 MiB fit one page only two at a time; an item over the budget gets a page alone.
    sizes = [int(mib * 0.4)] * 3 + [mib * 2] + [100] * 3
    pages = _pages(sizes, 100, {})
    assert pages == [[0, 1], [2], [3], [4, 5, 6]]
    assert sorted(i for page in pages for i in page) == list(range(len(sizes)))  # nothing lost or repeated


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


def test_model_limits_come_from_metadata_and_fall_back_for_values_stored_before_validation():
    from shared.model_limits import EmbeddingLimits, context_length
    assert context_length({"context_length": 4096.0}) == 4096 and context_length({}) == 2048
    for stored in ("1e3", "4096", True, -5, 0, 1.5, None, [4096]):
        assert context_length({"context_length": stored}) == 2048
    limits = EmbeddingLimits.from_metadata({"max_inputs": 10, "max_input_tokens": 128})
    assert (limits.inputs, limits.input_tokens, limits.request_tokens) == (10, 128, 8192)
    assert limits.input_chars == 128 * 16


def test_the_api_is_read_from_the_protos():
    from shared import api
    assert {c.name: c.services for c in api.components(implemented_only=False)} == {
        "deployment": ("llmops.v1.DeploymentService",), "experiment": ("llmops.v1.ExperimentService",),
        "registry": ("llmops.v1.RegistryService",),
        "router": ("llmops.v1.InferenceService", "llmops.v1.OpenAIService")}
    # A component is implemented when its package exists (services/<name>/).
    assert {c.name for c in api.components()} == {"deployment", "experiment", "registry", "router"}
    assert {m.path for m in api.internal_methods()} == {
        "/llmops.v1.DeploymentService/WatchEndpoints", "/llmops.v1.ExperimentService/RecordOutcomes",
        "/llmops.v1.ExperimentService/WatchExperiments"}
    assert {(m.path, m.component) for m in api.streaming_methods()} == {
        ("/llmops.v1.InferenceService/ChatStream", "router"), ("/llmops.v1.InferenceService/CompleteStream", "router"),
        ("/llmops.v1.OpenAIService/StreamChatCompletion", "router"),
        ("/llmops.v1.OpenAIService/StreamCompletion", "router")}
    chat = next(m for m in api.methods() if m.path == "/llmops.v1.InferenceService/Chat")
    assert chat.http == (("POST", "/llm-ops/v1/serve/{name}/chat", "*"),)
    openai_chat = next(m for m in api.methods() if m.path == "/llmops.v1.OpenAIService/CreateChatCompletion")
    assert openai_chat.http == (("POST", "/v1/chat/completions", "body"),)


def test_no_service_waits_with_asyncio_wait_for():
    """On Python 3.11 asyncio.wait_for swallows a cancel that arrives as the awaited thing completes
    (CPython gh-86296): a background loop that uses it can outlive task.cancel(), and the service's
    close() then waits forever (CI saw the local runtime's reconcile loop do that). asyncio.timeout()
    re-raises the cancel."""
    from pathlib import Path

    services = Path(__file__).resolve().parents[2] / "services"
    offenders = [f"{path.relative_to(services)}:{number}" for path in services.rglob("*.py")
                 if "llmops" not in path.parts
                 for number, line in enumerate(path.read_text().splitlines(), 1) if "asyncio.wait_for(" in line]
    assert offenders == []
