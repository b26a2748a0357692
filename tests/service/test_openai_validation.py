"""What the router refuses on its own, before anything reaches a replica: OpenAI's /v1 and the
enveloped /serve/{name} API through the real Envoy and router (tests/service/conftest.py
`fake_serving`: replicas that speak Triton's protocol, no model), each refusal a 400 (404 for an
unknown model) naming the parameter in OpenAI's error shape, or a BadRequest detail on native
gRPC. What needs a model to answer is tests/e2e/test_openai_contract.py."""

from __future__ import annotations

import grpc
import openai
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2

from llmops.v1 import inference_pb2, inference_pb2_grpc

from ..helpers import OPENAI_HEADERS, assert_refused, identity, openai_client, openai_post

HI = [{"role": "user", "content": "Say hello."}]
CHAT, EMBED = "chat-model", "embedding-model"


@pytest.fixture(scope="module")
def client(fake_serving) -> openai.OpenAI:
    return openai_client(fake_serving.gateway)


def post(fake_serving, path: str, body: dict) -> requests.Response:
    return openai_post(fake_serving.gateway, path, body)


def envelope(fake_serving, path: str, body: dict) -> requests.Response:
    return requests.post(f"{fake_serving.gateway.url}/llm-ops/v1/serve/{CHAT}/{path}", json=body,
                         headers=OPENAI_HEADERS, timeout=60)


def test_a_valid_request_reaches_the_replica(fake_serving):
    """What makes the refusals below mean something: the same request, valid, is answered."""
    before = fake_serving.triton.requests
    response = post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI, "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello world"
    assert fake_serving.triton.requests == before + 1


def test_stream_options_without_stream_is_a_400(fake_serving):
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI,
                                                        "stream_options": {"include_usage": True}}), "stream_options")


def test_an_image_part_is_refused_by_name(fake_serving):
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    error = assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": [
        {"role": "user", "content": parts}]}), "messages[0].content[1].type")
    assert "text only" in error["message"]


@pytest.mark.parametrize("field,value", [
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("temperature", 2.5), ("top_p", 0), ("seed", 2**64),
    ("max_completion_tokens", 0), ("max_tokens", 100000), ("stop", ["a", "b", "c", "d", "e"]), ("n", 0), ("n", 9),
])
def test_out_of_range_sampling_is_a_400_naming_it(fake_serving, field, value):
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI, field: value}), field)


@pytest.mark.parametrize("field,value", [
    ("top_logprobs", 2), ("logit_bias", {"comma": 1}), ("logit_bias", {"28": 101}),
    ("tools", [{"type": "custom", "custom": {"name": "f"}}]), ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("audio", {"voice": "alloy", "format": "mp3"}),
    ("modalities", ["text", "audio"]), ("prediction", {"type": "content", "content": "x"}),
    ("reasoning_effort", "low"), ("store", True), ("service_tier", "flex"), ("web_search_options", {}),
    ("verbosity", "low"),
])
def test_what_the_platform_cannot_honour_is_a_400_naming_it(fake_serving, field, value):
    error = assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI, field: value}),
                           f"{field}[28]" if value == {"28": 101} else "tools[0].type" if field == "tools" else field)
    assert error["message"]


@pytest.mark.parametrize("messages,param", [
    ([*HI, {"role": "tool", "tool_call_id": "c9", "content": "42"}], "messages[1].tool_call_id"),
    ([*HI, {"role": "tool", "content": "42"}], "messages[1].tool_call_id"),
    ([*HI, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
    ([*HI, {"role": "function", "name": "f", "content": "42"}], "messages[1].role"),
])
def test_tool_messages_that_do_not_fit_the_conversation_are_refused_by_name(fake_serving, messages, param):
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": messages}), param)


def test_a_bad_response_format_is_a_400_naming_it(fake_serving):
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI,
                                                        "response_format": {"type": "xml"}}), "response_format.type")
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}}), "response_format.json_schema.schema")


@pytest.mark.parametrize("field,value", [
    ("prompt", ["one", "two"]), ("prompt", [1, 2, 3]), ("prompt", [[1, 2]]), ("best_of", 2), ("logprobs", 6),
    ("suffix", "end"), ("n", 9), ("presence_penalty", 9),
])
def test_completion_refusals_name_the_parameter(fake_serving, field, value):
    assert_refused(post(fake_serving, "/v1/completions", {"model": CHAT, "prompt": "Hi", **{field: value}}), field)


def test_an_unknown_model_is_a_404_in_openais_shape(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=HI)
    assert missing.value.type == "not_found_error" and missing.value.code == "not_found"
    assert missing.value.param is None


def test_the_sdk_sees_the_param(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=CHAT, messages=HI, temperature=7)
    assert (bad.value.param, bad.value.type) == ("temperature", "invalid_request_error")
    assert "temperature must be at least 0 and at most 2" in bad.value.message


@pytest.mark.parametrize("field,value", [("n", True), ("max_tokens", "5"), ("max_completion_tokens", 5.0),
                                         ("seed", False), ("top_logprobs", "2")])
def test_an_integer_parameter_takes_integers_only(fake_serving, field, value):
    """As OpenAI's API ("expected an integer"): pydantic's lax mode read true as 1 and "5" as 5."""
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI, field: value}), field)


@pytest.mark.parametrize("body,param", [
    ({"messages": HI}, "model"), ({"model": CHAT}, "messages"), ({"model": CHAT, "messages": "hi"}, "messages"),
    ({"model": CHAT, "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": CHAT, "messages": HI, "temperature": "hot"}, "temperature"),
])
def test_a_malformed_body_names_the_field(fake_serving, body, param):
    assert_refused(post(fake_serving, "/v1/chat/completions", body), param)


@pytest.mark.parametrize("key,param", [("\u001f", "logit_bias.\\u001f"), ("é\u2028", "logit_bias.\\u00e9\\u2028")])
def test_a_param_naming_the_callers_own_characters_is_still_a_400(fake_serving, key, param):
    """gRPC metadata (x-llmops-param, how the gateway learns the param) takes printable ASCII only: a
    logit_bias key of other characters was a 500 "Invalid metadata" (found by tests/e2e/test_fuzz_rest.py)."""
    assert_refused(post(fake_serving, "/v1/chat/completions", {"model": CHAT, "messages": HI,
                                                               "logit_bias": {key: None}}), param)


def test_invalid_json_is_a_400_in_openais_shape(fake_serving):
    response = requests.post(f"{fake_serving.gateway.url}/v1/chat/completions", data=b"{nope", timeout=30,
                             headers={**OPENAI_HEADERS, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({"input": [1, -2]}, "input"), ({"input": [[1, 2], []]}, "input"), ({"input": [1.5]}, "input"),
    ({"input": [True]}, "input"), ({"input": ["ok", 1]}, "input"), ({"input": [[1], 2]}, "input"),
    ({"input": [2**31]}, "input"), ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": 5}, "input"), ({"input": ["ok", ""]}, "input"), ({"input": [[1]] * 257}, "input"),
    ({"input": [7] * 513}, "input"),
])
def test_embedding_refusals_name_the_parameter(fake_serving, body, param):
    assert_refused(post(fake_serving, "/v1/embeddings", {"model": EMBED, **body}), param)


@pytest.mark.parametrize("ids", [[5, 6, 7], [[5, 6], [7]]], ids=["one input", "two inputs"])
def test_token_ids_reach_the_replica_as_one_vector_each(fake_serving, ids):
    response = post(fake_serving, "/v1/embeddings", {"model": EMBED, "input": ids})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == (2 if isinstance(ids[0], list) else 1)


@pytest.mark.parametrize("path,field,value", [
    ("chat", "n", 9), ("chat", "presence_penalty", 3), ("completion", "frequency_penalty", -2.5),
    ("chat", "response_format", {"type": "xml"}), ("completion", "seed", 2**64),
])
def test_the_envelope_api_refuses_the_same(fake_serving, path, field, value):
    body = {"messages": HI} if path == "chat" else {"prompt": "Hi"}
    response = envelope(fake_serving, path, {**body, field: value})
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "error" and field.split(".")[0] in response.json()["message"]


def test_native_grpc_names_the_field_in_a_bad_request_detail(fake_serving):
    with grpc.insecure_channel(fake_serving.router_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Chat(inference_pb2.ChatRequest(name=CHAT, messages=[inference_pb2.ChatMessage(
                role="user", content="Hi")], presence_penalty=5), metadata=identity("sdk-user", "viewer"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(dict(bad.value.trailing_metadata())["grpc-status-details-bin"])
    violations = [error_details_pb2.BadRequest.FromString(d.value) for d in status.details
                  if d.type_url.endswith("google.rpc.BadRequest")]
    assert [v.field for b in violations for v in b.field_violations] == ["presence_penalty"]
