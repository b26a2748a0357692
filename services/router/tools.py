"""Tool calling on any chat model: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.

The model sees the tools as the platform renders them (`Tools.instructions`, added to the system
message) and answers with one JSON object, sampled under a grammar built from the tools' schemas
(the replica's `json_schema` guided decoding, as response_format uses it):

    {"tool_calls": [{"name": "<function>", "arguments": {<its arguments>}}, ...]}   to call functions
    {"response": "<text>"}                                                        to answer in words

With tool_choice "auto" the grammar allows both; with "required" only the first, with any of the
functions; with a named function only that one. The grammar keeps a call's arguments within its
function's parameters schema, so a call parses; `ToolReader` still validates each call against its
schema (a keyword the grammar cannot express, such as multipleOf), and anything that does not parse
or validate is returned as content, never as a call. llama.cpp's server does the same for a model
whose chat template knows no tool format (its "generic" format); here it is the format for every
model, so one rendering and one parser serve them all.

In the conversation, an assistant message with tool_calls is shown to the model as the JSON it would
have written, and a `tool` message as a user message holding {"tool_response": {"name", "content"}}:
what the model reads back is its own format.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from shared.errors import InvalidArgument

from .prompting import Message
from .structured_output import check_json_schema

MAX_TOOLS = 128  # OpenAI's bound
MAX_PARALLEL_CALLS = 8  # calls in one answer, when parallel_tool_calls allows more than one
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for a function's name
TOOL_CHOICES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the arguments object as JSON text, as OpenAI gives it


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]  # as the caller gave it: what the model is shown, and calls are validated by
    grammar: dict[str, Any]  # as check_json_schema rewrites it for the converter (small integer ranges as enums)


def _invalid(param: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{param}: {why}", reason="INVALID_TOOLS", param=param)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class Tools:
    """A request's tools, checked, as the model is to use them: `named` is the function tool_choice
    names (None: any); `required` is False for tool_choice "auto"."""

    functions: tuple[Function, ...]
    required: bool
    named: str | None
    parallel: bool
    guide: str = field(compare=False)  # the answer's JSON schema, as check_json_schema returns it

    def reader(self) -> ToolReader:
        return ToolReader(self)

    @functools.cached_property
    def instructions(self) -> str:
        """What the model is told (the module's docstring): a request's tools are cached (tools_from), and so
        is this text, written once per distinct set."""
        listed = "\n".join(json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters},
                                      ensure_ascii=False) for f in self.functions)
        many = "one or more functions" if self.parallel else "one function"
        lines = ["# Tools", "",
                 "You can call these functions. The JSON Schema under \"parameters\" describes each one's arguments:",
                 listed, "", "Reply with one JSON object and nothing else:",
                 f'- {{"tool_calls": [{{"name": <function name>, "arguments": <arguments object>}}]}} to call '
                 f"{many}"]
        if not self.required:
            lines.append('- {"response": <your reply as a string>} to answer without calling a function')
        if self.named:
            lines.append(f"Call the function {self.named} now.")
        elif self.required:
            lines.append(f"Call {many} now.")
        lines.append('The result of a call comes back as {"tool_response": {"name": ..., "content": ...}}.')
        return "\n".join(lines)

    @functools.cached_property
    def _validators(self) -> dict[str, jsonschema.protocols.Validator]:
        return {f.name: jsonschema.validators.validator_for(f.parameters, jsonschema.Draft202012Validator)(
            f.parameters) for f in self.functions}

    def call(self, value: Any) -> ToolCall | None:
        """A call the model wrote, if it names a function and its arguments validate; None otherwise."""
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            return None
        validator = self._validators.get(value["name"]) if isinstance(value["name"], str) else None
        if validator is None or not isinstance(value["arguments"], dict) or not validator.is_valid(value["arguments"]):
            return None
        return ToolCall(new_call_id(), value["name"], json.dumps(value["arguments"], ensure_ascii=False,
                                                                 separators=(",", ":")))


def tools_from(tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool | None) -> Tools | None:
    """OpenAI's fields, checked (a 400 naming the field otherwise); None when the model is to answer in
    words: no tools, or tool_choice "none"."""
    if not tools:  # parallel_tool_calls changes nothing then: taken, as tool_choice "none" is
        if tool_choice not in (None, "none"):
            raise _invalid("tool_choice", "is only allowed when tools are given")
        return None
    return _checked(json.dumps([tools, tool_choice, parallel_tool_calls], sort_keys=True))


# An agent sends the same tools request after request: checked once (10 tools took 8 ms of the event loop,
# the schemas' checks most of it). A refusal raises, and is not kept.
@functools.lru_cache(maxsize=256)
def _checked(key: str) -> Tools | None:
    tools, tool_choice, parallel_tool_calls = json.loads(key)
    if len(tools) > MAX_TOOLS:
        raise _invalid("tools", f"holds {len(tools)} tools; at most {MAX_TOOLS}")
    functions = tuple(_function(tool, f"tools[{i}]") for i, tool in enumerate(tools))
    names = [f.name for f in functions]
    if (twice := next((n for n in names if names.count(n) > 1), None)) is not None:
        raise _invalid("tools", f"two functions are named {twice!r}")
    named = None
    if tool_choice is None:
        tool_choice = "auto"
    if isinstance(tool_choice, dict):
        if tool_choice.get("type") != "function":
            raise _invalid("tool_choice.type", f'only "function" is supported; got {str(tool_choice.get("type"))[:32]!r}')
        function = tool_choice.get("function")
        named = function.get("name") if isinstance(function, dict) else None
        if not isinstance(named, str):
            raise _invalid("tool_choice.function.name", "is required")
        if named not in names:
            raise _invalid("tool_choice.function.name", f"{named[:64]!r} is none of the tools' functions")
    elif tool_choice not in TOOL_CHOICES:
        raise _invalid("tool_choice", f'must be "none", "auto", "required" or {{"type": "function", "function": '
                       f'{{"name": ...}}}}; got {str(tool_choice)[:32]!r}')
    if tool_choice == "none":
        return None
    parallel = True if parallel_tool_calls is None else parallel_tool_calls
    if not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls", "must be a boolean")
    required = named is not None or tool_choice == "required"
    schema = _answer_schema([f for f in functions if named in (None, f.name)], required=required, parallel=parallel)
    return Tools(functions, required, named, parallel, guide=check_json_schema(schema, "tools"))


def _function(tool: Any, where: str) -> Function:
    if not isinstance(tool, dict):
        raise _invalid(where, "must be an object")
    if tool.get("type") != "function":
        raise _invalid(f"{where}.type", f'only "function" tools are supported; got {str(tool.get("type"))[:32]!r}')
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _invalid(f"{where}.function", "is required")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise _invalid(f"{where}.function.name", "must be 1 to 64 letters, digits, underscores or dashes")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise _invalid(f"{where}.function.description", "must be a string")
    parameters = function.get("parameters")
    if parameters is None or parameters == {}:
        parameters = EMPTY_PARAMETERS
    if not isinstance(parameters, dict):
        raise _invalid(f"{where}.function.parameters", "must be a JSON Schema object")
    # The grammar's bounds, and a 400 naming this tool, before the tools are joined into one schema.
    grammar = json.loads(check_json_schema(parameters, f"{where}.function.parameters"))
    try:
        jsonschema.validators.validator_for(parameters, jsonschema.Draft202012Validator).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise _invalid(f"{where}.function.parameters", f"is not a valid JSON Schema: {exc.message[:200]}") from exc
    return Function(name, description, parameters, grammar)


def _answer_schema(functions: list[Function], *, required: bool, parallel: bool) -> dict[str, Any]:
    """The JSON schema of the model's answer. Each function's own $defs move to the root under a name
    of their own, as the grammar converter resolves a $ref from the root."""
    defs: dict[str, Any] = {}
    calls = []
    for i, function in enumerate(functions):
        parameters = _hoisted(function.grammar, f"f{i}_", defs)
        calls.append({"type": "object", "properties": {"name": {"const": function.name}, "arguments": parameters},
                      "required": ["name", "arguments"], "additionalProperties": False})
    array = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}, "minItems": 1,
             "maxItems": MAX_PARALLEL_CALLS if parallel else 1}
    call_answer = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"],
                   "additionalProperties": False}
    schema: dict[str, Any] = call_answer if required else {"anyOf": [call_answer, {
        "type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
        "additionalProperties": False}]}
    return {**schema, "$defs": defs} if defs else schema


def _hoisted(parameters: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    own = {**parameters.get("definitions", {}), **parameters.get("$defs", {})}
    if not own:
        return parameters
    text = json.dumps({k: v for k, v in parameters.items() if k not in ("$defs", "definitions")})
    renamed = json.dumps(own)
    for pattern in (r'"#/\$defs/', r'"#/definitions/'):
        text = re.sub(pattern, f'"#/$defs/{prefix}', text)
        renamed = re.sub(pattern, f'"#/$defs/{prefix}', renamed)
    defs.update({prefix + name: value for name, value in json.loads(renamed).items()})
    return json.loads(text)


# the conversation ----------------------------------------------------------------------------------------------

def model_messages(messages: list[Message], tools: Tools | None = None) -> list[Message]:
    """The conversation as the model reads it: an assistant message's calls as the JSON it writes, a
    tool message as a user message holding the result (the module's docstring). With tools, the model
    answers in JSON: its earlier answers in words are shown as the {"response": ...} it would write."""
    names: dict[str, str] = {}  # call id -> the function it called
    out = []
    for i, message in enumerate(messages):
        if message.role == "tool":
            if not message.tool_call_id:
                raise _invalid(f"messages[{i}].tool_call_id", "is required in a tool message")
            if message.tool_call_id not in names:
                raise _invalid(f"messages[{i}].tool_call_id", f"{message.tool_call_id[:64]!r} answers no tool call "
                               "of an earlier assistant message")
            out.append(Message("user", response_text(names[message.tool_call_id], message.content)))
        elif message.tool_calls:
            if message.role != "assistant":
                raise _invalid(f"messages[{i}].tool_calls", "only an assistant message makes tool calls")
            names.update({call.id: call.name for call in message.tool_calls})
            calls = call_text(message.tool_calls)
            out.append(Message("assistant", f"{message.content}\n{calls}" if message.content.strip() else calls,
                               message.name))
        elif tools is not None and message.role == "assistant":
            out.append(Message("assistant", json.dumps({"response": message.content}, ensure_ascii=False),
                               message.name))
        else:
            out.append(message)
    return out


def call_text(calls: tuple[ToolCall, ...]) -> str:
    """Calls as the model writes them: what an assistant message's tool_calls are shown as."""
    return json.dumps({"tool_calls": [{"name": c.name, "arguments": _arguments(c.arguments)} for c in calls]},
                      ensure_ascii=False)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # as the client sent it: the model reads it as the string it is


def response_text(name: str, content: str) -> str:
    """A tool message's content as the model reads it."""
    return json.dumps({"tool_response": {"name": name, "content": content}}, ensure_ascii=False)


# the answer ------------------------------------------------------------------------------------------------

_OPENING = re.compile(r'\s*\{\s*"(response|tool_calls)"\s*:\s*(["\[])')
# Whole characters of a JSON string's inside: the longest prefix that decodes, an escape never cut in two.
_STRING_PART = re.compile(r'(?:[^"\\]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_HIGH_SURROGATE_END = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")
_decoder = json.JSONDecoder()


class ToolReader:
    """One choice's answer, read as it is generated: the words of a {"response": ...} answer as content
    as soon as they decode, each call once its JSON is whole and valid (Tools.call), and a call the answer
    already made (the same function and arguments) not again. Whatever does not parse or validate is
    content, at the end."""

    def __init__(self, tools: Tools) -> None:
        self._tools = tools
        self._text = ""
        self._kind = ""  # "response" or "tool_calls", once the answer's first key is read
        self._at = 0  # how far the text has been read
        self._closed = False  # the response's string ended, or a call failed: nothing more is read
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[str | ToolCall]:
        """The content (str) and calls that `text` completes."""
        self._text += text
        if self._closed:
            return []
        if not self._kind:
            opening = _OPENING.match(self._text)
            if opening is None:
                return []
            if (opening[1] == "response") != (opening[2] == '"'):  # not the answer's shape: all of it is content
                self._closed = True
                return []
            self._kind, self._at = opening[1], opening.end()
        return self._words() if self._kind == "response" else self._calls()

    def read(self, text: str, finish_reason: str | None = None) -> tuple[list[str | ToolCall], str | None]:
        """feed(text) and, once the generation ended (its finish_reason given), finish(): the content and
        calls that completes, and the choice's finish_reason (None while it goes on)."""
        read = self.feed(text)
        if finish_reason is None:
            return read, None
        left, finish_reason = self.finish(finish_reason)
        return read + left, finish_reason

    def finish(self, finish_reason: str) -> tuple[list[str | ToolCall], str]:
        """What is left once the generation ended, and the choice's finish_reason ("tool_calls" when it
        made a call and was not cut short)."""
        left: list[str | ToolCall] = []
        if not self._kind or (self._kind == "tool_calls" and not self._whole()):
            rest = self._text[self._at:] if self.calls else self._text  # never a call's JSON a second time
            if rest.strip():
                left.append(rest)
        if self.calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        return left, finish_reason

    def _words(self) -> list[str | ToolCall]:
        part = _STRING_PART.match(self._text, self._at)
        raw = part[0]
        if _HIGH_SURROGATE_END.search(raw):  # half of a pair: wait for the other half
            raw = raw[:-6]
        self._at += len(raw)
        if part.end() < len(self._text) and self._text[part.end()] == '"' and len(raw) == len(part[0]):
            self._closed = True
        return [json.loads(f'"{raw}"')] if raw else []

    def _calls(self) -> list[str | ToolCall]:
        found: list[str | ToolCall] = []
        while True:
            at = _skip(self._text, self._at)
            if at < len(self._text) and self._text[at] in ",]":
                if self._text[at] == "]":
                    self._closed = True
                    return found
                at = _skip(self._text, at + 1)
            try:
                value, end = _decoder.raw_decode(self._text, at)
            except ValueError:  # not whole yet (or never: then it is content at the end)
                return found
            call = self._tools.call(value)
            if call is None:
                self._closed, self._at = True, at
                return found
            # The same call again (a small model repeats itself up to the array's bound): given once, so that a
            # client runs it once.
            if not any((c.name, c.arguments) == (call.name, call.arguments) for c in self.calls):
                self.calls.append(call)
                found.append(call)
            self._at = end

    def _whole(self) -> bool:
        """The calls' array was read to its end, every call in it valid."""
        return self._closed and bool(self.calls) and self._text[_skip(self._text, self._at):].startswith("]")


def split(read: list[str | ToolCall]) -> tuple[str, list[ToolCall]]:
    """What a reader gave, as content and calls."""
    return "".join(p for p in read if isinstance(p, str)), [p for p in read if not isinstance(p, str)]


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at
