"""Tool calling through the real gateway, router, Triton and llama.cpp (services/router/tools.py):
the official openai SDK (Python here, the npm package in tests/js/tool_calls.test.mjs), LangChain's
ChatOpenAI, the Vercel AI SDK (tests/js/vercel_ai.test.mjs), the enveloped API and native gRPC.

The bundled model is SmolLM2-135M: it writes calls and arguments under the tools' grammar, so they
parse and validate whatever it makes of the prompt, but it cannot judge well when a tool is called
for. The `auto` tests therefore use prompts on which it decides by a wide margin at temperature 0
(measured: 3.5 logits towards a call for the weather question under a weather assistant's system
prompt, 10 towards words for the third greeting of a conversation of greetings)."""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import jsonschema
import openai
import pytest
import requests
from google.protobuf import json_format, struct_pb2

from llmops.v1 import inference_pb2, inference_pb2_grpc

from ..helpers import OPENAI_HEADERS, REPO_ROOT, assert_envelope, assert_refused, identity, openai_client, openai_post

CHAT = "chat-model"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 40},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather forecast for a city",
                                            "parameters": WEATHER_PARAMETERS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a time zone",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                        "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris this week?"}]
# On these the model decides by a wide margin (the module's docstring).
CALLS = [{"role": "system", "content": "You are a weather assistant. Call get_weather for any question about the "
                                      "weather."},
         {"role": "user", "content": "Is it raining in London?"}]
GREETINGS = [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
             {"role": "user", "content": "Thanks, that is all."}, {"role": "assistant", "content": "You are welcome!"},
             {"role": "user", "content": "Good night!"}]


@pytest.fixture(scope="module")
def client(infer) -> openai.OpenAI:
    return openai_client(infer.gateway)


def weather_call(message) -> dict:  # noqa: ANN001 - the SDK's ChatCompletionMessage
    """The message's one get_weather call's arguments, checked against the function's schema."""
    [call] = message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    return arguments


def test_a_required_call_has_arguments_that_validate(client):
    answer = client.chat.completions.create(model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            parallel_tool_calls=False, temperature=0.9, seed=7, max_tokens=120)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice.message
    weather_call(choice.message)
    assert answer.usage.completion_tokens > 0


def test_a_named_function_is_the_one_called(client):
    answer = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0, max_tokens=120)
    calls = answer.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}
    assert all(isinstance(json.loads(c.function.arguments)["zone"], str) for c in calls)
    assert answer.choices[0].finish_reason == "tool_calls"


def test_auto_calls_a_tool_when_the_model_chooses_to(client):
    answer = client.chat.completions.create(model=CHAT, messages=CALLS, tools=[WEATHER], tool_choice="auto",
                                            parallel_tool_calls=False, temperature=0, max_tokens=120)
    assert answer.choices[0].finish_reason == "tool_calls"
    weather_call(answer.choices[0].message)


def test_auto_answers_in_words_when_the_model_chooses_to(client):
    answer = client.chat.completions.create(model=CHAT, messages=GREETINGS, tools=[WEATHER], temperature=0,
                                            max_tokens=60)
    message = answer.choices[0].message
    assert message.tool_calls is None and message.content.strip()
    assert not message.content.lstrip().startswith("{")  # the words, not the JSON they came in
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_call_is_assembled_by_the_sdk(client):
    with client.chat.completions.stream(model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="required",
                                        parallel_tool_calls=False, temperature=0, max_tokens=120) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    arguments = weather_call(final.choices[0].message)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    assert [d.index for d in deltas] == [0] and deltas[0].id.startswith("call_")
    assert json.loads(deltas[0].function.arguments) == arguments
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_streamed_words_of_an_auto_answer_come_as_content(client):
    stream = client.chat.completions.create(model=CHAT, messages=GREETINGS, tools=[WEATHER], temperature=0,
                                            max_tokens=60, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model=CHAT, messages=GREETINGS, tools=[WEATHER], temperature=0,
                                           max_tokens=60)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices[0].delta.content]) > 1
    assert all(not c.choices[0].delta.tool_calls for c in chunks)


def test_the_tools_result_goes_back_for_a_second_turn(client):
    first = client.chat.completions.create(model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=120)
    call = first.choices[0].message.tool_calls[0]
    conversation = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "Sunny all week, 24 degrees."}]
    second = client.chat.completions.create(model=CHAT, messages=conversation, tools=[WEATHER], tool_choice="none",
                                            temperature=0, max_tokens=40)
    assert second.choices[0].message.tool_calls is None and second.choices[0].message.content.strip()
    alone = client.chat.completions.create(model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 10  # the call and its result are in the prompt
    bad = [*conversation[:2], {"role": "tool", "tool_call_id": "call_unknown", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT, messages=bad, tools=[WEATHER], max_tokens=4)
    assert refused.value.body["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "maxLength": 100000}}}}}]},
     "tools[0].function.parameters.properties.s.maxLength"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "logprobs": True}, "logprobs"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_what_tool_calling_cannot_honour_is_a_400_naming_it(infer, extra, param):
    assert_refused(openai_post(infer.gateway, "/v1/chat/completions",
                               {"model": CHAT, "messages": ASK, "max_tokens": 4, **extra}), param)


def test_the_envelope_and_native_grpc_take_tools(infer):
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
            "temperature": 0, "max_tokens": 120}
    response = requests.post(f"{infer.gateway.api}/serve/{CHAT}/chat", json=body, headers=OPENAI_HEADERS, timeout=120)
    choice = assert_envelope(response, 200, "success")["data"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_PARAMETERS)

    request = inference_pb2.ChatRequest(name=CHAT, temperature=0, max_tokens=120, parallel_tool_calls=False,
                                        tool_choice=json_format.ParseDict({"type": "function", "function": {
                                            "name": "get_weather"}}, struct_pb2.Value()))
    json_format.ParseDict({"messages": ASK, "tools": [WEATHER]}, request)
    with grpc.insecure_channel(infer.gateway.grpc_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        chunks = list(stub.ChatStream(inference_pb2.ChatStreamRequest(request=request),
                                      metadata=identity("grpc-user", "viewer"), timeout=120))
    deltas = [d for c in chunks for choice in c.choices for d in choice.delta.tool_calls]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather")]
    jsonschema.validate(json.loads(deltas[0].function.arguments), WEATHER_PARAMETERS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and chunks[-1].usage.completion_tokens > 0


# LangChain ------------------------------------------------------------------------------------------------

def test_langchain_bind_tools_and_one_agent_step(infer):
    """LangChain's ChatOpenAI with a tool bound: the model calls it, the tool runs, its result goes
    back as a ToolMessage, and the model answers in words (model -> tool -> model)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city, in celsius or fahrenheit."""
        return f"Sunny in {city}, 24 degrees {unit}."

    model = ChatOpenAI(model=CHAT, base_url=f"{infer.gateway.url}/v1", api_key="not-needed", temperature=0,
                       max_tokens=120, max_retries=0, default_headers=OPENAI_HEADERS)
    messages = [HumanMessage("What is the weather in Paris?")]
    asked = model.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False).invoke(messages)
    [call] = asked.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "unit"}
    result = get_weather.invoke(call)  # a ToolMessage answering the call's id
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    answer = model.bind_tools([get_weather], tool_choice="none").invoke([*messages, asked, result])
    assert not answer.tool_calls and answer.content.strip()

    streamed = None
    for piece in model.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False).stream(messages):
        streamed = piece if streamed is None else streamed + piece
    assert [c["name"] for c in streamed.tool_calls] == ["get_weather"]


# npm packages -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script,tests", [("tool_calls.test.mjs", 6), ("vercel_ai.test.mjs", 3)],
                         ids=["openai", "vercel-ai-sdk"])
def test_the_npm_packages_call_tools(infer, script, tests):
    """The official openai npm package, and the Vercel AI SDK's Chat Completions provider (its agent loop)."""
    out = subprocess.run(["node", "--test", str(REPO_ROOT / "tests" / "js" / script)],
                         capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                         env={**os.environ, "BASE_URL": infer.gateway.url, "CHAT_MODEL": CHAT})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"# pass {tests}" in out.stdout and "# fail 0" in out.stdout, out.stdout
