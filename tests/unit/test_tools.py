"""Tool calling's checks, rendering and answer reading (services/router/tools.py), without a model."""

from __future__ import annotations

import json

import pytest
from llama_cpp import llama_grammar

from router.prompting import Message
from router.tools import ToolCall, Tools, model_messages, tools_from
from shared.errors import InvalidArgument

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"]}}}


def read(tools: Tools, pieces: list[str], finish_reason: str = "stop") -> tuple[list, str]:
    reader = tools.reader()
    out = [p for text in pieces for p in reader.feed(text)]
    left, reason = reader.finish(finish_reason)
    return out + left, reason


def in_tokens(text: str, size: int = 3) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_a_response_answer_streams_its_words_as_they_decode():
    tools = tools_from([WEATHER], "auto", None)
    answer = json.dumps({"response": 'Hi "there" \u00e9\U0001f600 done'})  # escapes and a surrogate pair
    out, reason = read(tools, in_tokens(answer, 2))
    assert all(isinstance(p, str) for p in out) and len(out) > 3  # in pieces, as generated
    assert "".join(out) == 'Hi "there" \u00e9\U0001f600 done'
    assert reason == "stop"


def test_calls_come_whole_with_ids_and_arguments_as_json_text():
    tools = tools_from([WEATHER, TIME], "required", None)
    answer = ('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
              '{"name": "get_time", "arguments": {"zone": "CET"}}]}')
    out, reason = read(tools, in_tokens(answer))
    assert [(c.name, json.loads(c.arguments)) for c in out] == [("get_weather", {"city": "Paris"}),
                                                               ("get_time", {"zone": "CET"})]
    assert all(isinstance(c, ToolCall) and c.id.startswith("call_") for c in out)
    assert len({c.id for c in out}) == 2
    assert reason == "tool_calls"


def test_a_call_that_does_not_validate_is_content_never_a_call():
    tools = tools_from([WEATHER], "auto", None)
    answer = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": 3}}]}'
    out, reason = read(tools, in_tokens(answer))
    assert out == [answer] and reason == "stop"
    unknown = '{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}'
    assert read(tools, [unknown]) == ([unknown], "stop")


def test_an_answer_cut_short_keeps_the_whole_calls_and_gives_the_rest_as_content():
    tools = tools_from([WEATHER], "required", None)
    whole = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    cut = ', {"name": "get_weather", "arguments": {"ci'
    out, reason = read(tools, [whole, cut], "length")
    assert isinstance(out[0], ToolCall) and json.loads(out[0].arguments) == {"city": "Oslo"}
    assert out[1:] == [cut] and reason == "length"
    assert read(tools, ['{"tool_ca'], "length") == (['{"tool_ca'], "length")


def test_text_that_is_not_the_answers_shape_is_content():
    tools = tools_from([WEATHER], "auto", None)
    assert read(tools, ["Sure! ", "It is sunny."]) == (["Sure! It is sunny."], "stop")


def test_tool_choice_none_and_no_tools_mean_words():
    assert tools_from([WEATHER], "none", None) is None
    assert tools_from(None, None, None) is None


@pytest.mark.parametrize(("tools", "choice", "parallel", "param"), [
    ([WEATHER], "sometimes", None, "tool_choice"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, None, "tool_choice.function.name"),
    ([WEATHER], {"type": "custom"}, None, "tool_choice.type"),
    ([{"type": "custom", "custom": {"name": "x"}}], None, None, "tools[0].type"),
    ([{"type": "function", "function": {"name": "bad name!"}}], None, None, "tools[0].function.name"),
    ([WEATHER, WEATHER], None, None, "tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "maxLength": 100000}}}}}], None, None, "tools[0].function.parameters"),
    (None, "required", None, "tool_choice"),
    ([WEATHER], None, "yes", "parallel_tool_calls"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(tools, choice, parallel, param):
    with pytest.raises(InvalidArgument) as refused:
        tools_from(tools, choice, parallel)
    assert refused.value.param is not None and refused.value.param.startswith(param)


def test_the_grammar_holds_the_right_calls_for_each_choice():
    auto = json.loads(tools_from([WEATHER, TIME], "auto", None).guide)
    assert [sorted(branch["properties"]) for branch in auto["anyOf"]] == [["tool_calls"], ["response"]]
    named = json.loads(tools_from([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}},
                                  False).guide)
    calls = named["properties"]["tool_calls"]
    assert calls["maxItems"] == 1 and calls["items"]["properties"]["name"] == {"const": "get_time"}
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(named))
    assert "get_time" in grammar and "get_weather" not in grammar


def test_each_tools_defs_are_its_own_in_the_joined_schema():
    def with_defs(name: str, kind: str) -> dict:
        return {"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "required": ["x"],
            "$defs": {"X": {"type": kind}}}}}
    tools = tools_from([with_defs("a", "string"), with_defs("b", "integer")], "required", None)
    schema = json.loads(tools.guide)
    assert schema["$defs"] == {"f0_X": {"type": "string"}, "f1_X": {"type": "integer"}}
    assert read(tools, ['{"tool_calls": [{"name": "b", "arguments": {"x": 4}}]}'])[1] == "tool_calls"
    assert read(tools, ['{"tool_calls": [{"name": "b", "arguments": {"x": "4"}}]}'])[1] == "stop"


def test_the_conversation_shows_calls_and_results_in_the_models_own_format():
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = model_messages([Message("user", "Weather in Paris?"), Message("assistant", "", tool_calls=(call,)),
                               Message("tool", "18C and sunny", tool_call_id="call_1")])
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert json.loads(messages[1].content) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert json.loads(messages[2].content) == {"tool_response": {"name": "get_weather", "content": "18C and sunny"}}


def test_a_tool_message_must_answer_an_earlier_call():
    with pytest.raises(InvalidArgument) as refused:
        model_messages([Message("user", "Hi"), Message("tool", "18C", tool_call_id="call_x")])
    assert refused.value.param == "messages[1].tool_call_id"
    with pytest.raises(InvalidArgument) as refused:
        model_messages([Message("tool", "18C")])
    assert refused.value.param == "messages[0].tool_call_id"


def test_the_instructions_name_every_tool_and_the_answer_format():
    text = tools_from([WEATHER, TIME], "auto", None).instructions
    assert "get_weather" in text and "get_time" in text and '"response"' in text
    required = tools_from([WEATHER], "required", False).instructions
    assert '"response"' not in required and "one function" in required


def test_a_small_integer_range_is_written_out_so_that_the_grammar_keeps_to_it():
    """The converter ignores minimum and maximum: days 1-7 became any integer, and a call with days 0
    failed validation (content instead of a call, under tool_choice required)."""
    days = {"type": "function", "function": {"name": "forecast", "parameters": {
        "type": "object", "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["days"]}}}
    tools = tools_from([days], "required", None)
    arguments = json.loads(tools.guide)["properties"]["tool_calls"]["items"]["properties"]["arguments"]
    assert arguments["properties"]["days"] == {"enum": [1, 2, 3, 4, 5, 6, 7]}
    assert "minimum" in tools.instructions  # the model is shown the caller's schema
    assert read(tools, ['{"tool_calls": [{"name": "forecast", "arguments": {"days": 0}}]}'])[1] == "stop"


def test_a_call_repeated_in_one_answer_is_given_once():
    """SmolLM2-135M repeats a call until the array's bound (8): a client would run it eight times."""
    tools = tools_from([WEATHER, TIME], "required", None)
    paris = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    oslo = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    out, reason = read(tools, in_tokens(f'{{"tool_calls": [{paris}, {paris}, {oslo}, {paris}]}}'))
    assert [json.loads(c.arguments)["city"] for c in out] == ["Paris", "Oslo"] and reason == "tool_calls"
