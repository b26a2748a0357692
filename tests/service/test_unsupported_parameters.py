"""Parameters a replica's model cannot honour, through the real Envoy and router to a replica that
speaks Triton's protocol (tests/service/conftest.py `fake_serving`) and declares only the echo
model's inputs. Triton refuses a tensor its model does not declare, with the words the fake uses
("unexpected inference input 'logit_bias_values' for model 'llm'", as tritonserver 2.51 answers
the echo model); that is the request's fault: a 400 naming the parameter, sent to the replica
once (a 503 is a replica failure, which the SDKs retry), and the replica keeps serving. A token id
that no INT32 tensor can hold never reaches a replica."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ..fakes import FakeTriton
from ..helpers import assert_refused, openai_client, openai_post

HI = [{"role": "user", "content": "Say hello."}]
CHAT = "chat-model"
ECHO_CONFIG = Path(__file__).parents[2] / "deploy" / "triton" / "echo" / "config.pbtxt"


def echo_inputs() -> frozenset[str]:
    """The inputs the echo model declares, read from its Triton config."""
    block = re.search(r"^input \[(.*?)^\]", ECHO_CONFIG.read_text(), re.DOTALL | re.MULTILINE)
    return frozenset(re.findall(r'name: "(\w+)"', block[1]))


@pytest.fixture
def echo_replica(fake_serving) -> Iterator[FakeTriton]:
    triton = fake_serving.triton
    triton.inputs = echo_inputs()
    try:
        yield triton
    finally:
        triton.inputs = None


@pytest.mark.parametrize("path,fields,param", [
    ("/v1/chat/completions", {"logit_bias": {"28": 5}}, "logit_bias"),
    ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/completions", {"logprobs": 2}, "logprobs"),
    ("/v1/completions", {"logit_bias": {"28": -5}}, "logit_bias"),
])
def test_a_parameter_the_model_lacks_is_a_400_naming_it(fake_serving, echo_replica, path, fields, param):
    input_of = {"messages": HI} if path == "/v1/chat/completions" else {"prompt": "Say hello."}
    before = echo_replica.requests
    error = assert_refused(openai_post(fake_serving.gateway, path, {"model": CHAT, **input_of, **fields}), param)
    assert error["code"] == "invalid_argument" and "not support" in error["message"], error
    assert echo_replica.requests == before + 1  # one attempt: a refusal is not retried on a replica
    # The replica was not at fault: it answers the same request without the parameter.
    plain = openai_post(fake_serving.gateway, path, {"model": CHAT, **input_of})
    assert plain.status_code == 200, plain.text


def test_the_sdk_sends_such_a_request_once(fake_serving, echo_replica):
    """The SDK's own retries (2 by default) are for 408, 429 and 5xx: a 503 went three times."""
    client = openai_client(fake_serving.gateway).with_options(max_retries=2)
    before = echo_replica.requests
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT, messages=HI, logit_bias={"28": 5})
    assert refused.value.status_code == 400 and refused.value.body["param"] == "logit_bias"
    assert echo_replica.requests == before + 1


@pytest.mark.parametrize("path,token", [
    ("/v1/chat/completions", str(2**31)), ("/v1/chat/completions", str(2**64)), ("/v1/completions", str(2**31)),
])
def test_a_token_id_beyond_int32_is_a_400_before_any_replica(fake_serving, path, token):
    input_of = {"messages": HI} if path == "/v1/chat/completions" else {"prompt": "Say hello."}
    before = fake_serving.triton.requests
    error = assert_refused(openai_post(fake_serving.gateway, path,
                                       {"model": CHAT, **input_of, "logit_bias": {token: 1}}), "logit_bias")
    assert token in error["message"]
    assert fake_serving.triton.requests == before  # refused by the router: nothing was sent
