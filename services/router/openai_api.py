"""OpenAI's API under /v1, as its API reference gives it: the request bodies
(content parts, stop as a string or a list, token-id inputs, nulls), the
responses and stream chunks (finish_reason null until the last, usage only
when stream_options.include_usage asks, "data: [DONE]"), base64 embeddings,
and errors that name their parameter.

A parameter of OpenAI's API that the platform cannot honour is a 400 naming
it; a field that is not part of OpenAI's API is ignored and logged. The
sampling checks themselves are the typed API's (prompting.check_sampling), so
both surfaces accept and refuse the same values.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError, field_validator

from shared.errors import InvalidArgument

from .prompting import Message, SamplingRequest
from .tools import ToolCall, Tools, tools_from

log = structlog.get_logger()

# OpenAI's default for /v1/completions (chat has none: the platform's default applies).
COMPLETION_DEFAULT_MAX_TOKENS = 16
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for /v1/completions
MAX_TOKEN_ID = 2**31 - 1  # the largest a token id tensor (INT32) holds
# The role OpenAI's newer models take instead of system; it means the same to a chat template.
ROLE_ALIASES = {"developer": "system"}


def _refuse(param: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{param}: {why}", reason="UNSUPPORTED_PARAMETER", param=param)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Body(BaseModel):
    # Fields outside OpenAI's API are kept (to be logged), never an error: clients add their own.
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or ())


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    json_schema: dict[str, Any] | None = None


class SampledBody(_Body):
    """What chat and completions share, OpenAI's reference order."""

    model: str
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    max_tokens: StrictInt | None = None
    n: StrictInt | None = None
    presence_penalty: float | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    # Not OpenAI's: values for the variables of an A/B experiment's prompt template.
    variables: dict[str, Any] | None = None

    def common_refusals(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise _refuse("stream_options", "is only allowed when stream is true")

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def token_bias(self) -> dict[int, float] | None:
        """logit_bias with its keys, token ids written as strings in JSON, as ints. An id goes to the
        model as an INT32 (logit_bias_token_ids): one beyond that is no token of any vocabulary."""
        if not self.logit_bias:
            return None
        try:
            bias = {int(token): value for token, value in self.logit_bias.items()}
        except ValueError as exc:
            raise InvalidArgument("logit_bias keys must be token ids (integers written as strings)",
                                  reason="INVALID_INPUT", param="logit_bias") from exc
        if (beyond := next((t for t in bias if not 0 <= t <= MAX_TOKEN_ID), None)) is not None:
            raise InvalidArgument(f"logit_bias: {beyond} is not a token id (0 to {MAX_TOKEN_ID})",
                                  reason="INVALID_INPUT", param="logit_bias")
        return bias

    def stop_words(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError("must be a string or an array of content parts")
        return value


class ChatCompletionBody(SampledBody):
    messages: list[_ChatMessage]
    audio: Any = None
    function_call: Any = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    max_completion_tokens: StrictInt | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None
    prediction: Any = None
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    response_format: _ResponseFormat | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    tool_choice: Any = None
    tools: list[Any] | None = None
    top_logprobs: StrictInt | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    def refusals(self) -> None:
        self.common_refusals()
        for param in ("audio", "prediction", "reasoning_effort", "verbosity", "web_search_options"):
            if getattr(self, param) is not None:
                raise _refuse(param, "is not supported by this platform's models")
        if self.modalities not in (None, ["text"]):
            raise _refuse("modalities", 'only ["text"] is supported')
        if self.functions:
            raise _refuse("functions", "the deprecated functions are not supported; send them as tools")
        if self.function_call not in (None, "none"):
            raise _refuse("function_call", "the deprecated function_call is not supported; use tool_choice")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs: true", reason="INVALID_INPUT", param="top_logprobs")
        if self.store:
            raise _refuse("store", "this platform does not store completions")
        if self.service_tier not in (None, "auto", "default"):
            raise _refuse("service_tier", 'only "auto" and "default" are supported')

    def chat_tools(self) -> Tools | None:
        return tools_from(self.tools, self.tool_choice, self.parallel_tool_calls)

    def chat_messages(self) -> list[Message]:
        out = []
        for i, m in enumerate(self.messages):
            where = f"messages[{i}]"
            if m.role == "function" or m.function_call is not None:
                raise _refuse(where + (".role" if m.role == "function" else ".function_call"),
                              "the deprecated function messages are not supported; use tool_calls and tool messages")
            calls = tuple(_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(m.tool_calls or ()))
            out.append(Message(ROLE_ALIASES.get(m.role, m.role), _text_of(m.content, f"{where}.content"),
                               m.name or "", tool_calls=calls, tool_call_id=m.tool_call_id or ""))
        return out

    def sampling(self) -> SamplingRequest:
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and not isinstance((fmt.json_schema or {}).get("schema"),
                                                                            dict):
            raise _refuse("response_format.json_schema.schema", "a JSON Schema object is required")
        newer = self.max_completion_tokens is not None  # the newer name wins, as in OpenAI's API
        return SamplingRequest(
            max_tokens=self.max_completion_tokens if newer else self.max_tokens,
            max_tokens_param="max_completion_tokens" if newer else "max_tokens",
            temperature=self.temperature, top_p=self.top_p, stop=self.stop_words(), seed=self.seed,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=self.token_bias(), logprobs=bool(self.logprobs), top_logprobs=self.top_logprobs or 0,
            response_format=fmt.type if fmt else None,
            json_schema=(fmt.json_schema or {}).get("schema") if fmt else None)


def _tool_call(call: Any, where: str) -> ToolCall:
    """One of an assistant message's tool_calls, as OpenAI's reference gives it."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise InvalidArgument(f'{where} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                              reason="INVALID_INPUT", param=where)
    for key in ("name", "arguments"):
        if not isinstance(function.get(key), str):
            raise InvalidArgument(f"{where}.function.{key} must be a string", reason="INVALID_INPUT",
                                  param=f"{where}.function.{key}")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise InvalidArgument(f"{where}.id must be a non-empty string", reason="INVALID_INPUT", param=f"{where}.id")
    return ToolCall(call["id"], function["name"], function["arguments"])


def _text_of(content: str | list[_ContentPart] | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise _refuse(f"{param}[{j}].type", f"content parts of type {part.type[:32]!r} are not supported: "
                          "this platform's models take text only")
        if part.text is None:
            raise InvalidArgument(f"{param}[{j}].text is required", reason="INVALID_INPUT", param=f"{param}[{j}].text")
        texts.append(part.text)
    return "\n".join(texts)


class CompletionBody(SampledBody):
    prompt: Any = None
    best_of: StrictInt | None = None
    echo: bool | None = None
    logprobs: StrictInt | None = None
    suffix: str | None = None

    def refusals(self) -> None:
        self.common_refusals()
        if self.best_of not in (None, 1):
            raise _refuse("best_of", "only 1 is supported")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
            raise InvalidArgument(f"logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}; got {self.logprobs}",
                                  reason="INVALID_INPUT", param="logprobs")
        if self.logprobs is not None and self.echo:
            raise _refuse("echo", "echo with logprobs would need the prompt's log-probabilities, which this "
                          "platform does not give")
        if self.suffix:
            raise _refuse("suffix", "insertion (a suffix after the completion) is not supported")

    def prompt_text(self) -> str:
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if prompt is None:
            raise InvalidArgument("prompt is required", reason="INVALID_INPUT", param="prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            raise _refuse("prompt", "only one prompt per request is supported; send one request per prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) or isinstance(p, list) for p in prompt):
            raise _refuse("prompt", "token-id prompts are not supported; send the prompt as text")
        raise InvalidArgument("prompt must be a string", reason="INVALID_INPUT", param="prompt")

    def sampling(self) -> SamplingRequest:
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        return SamplingRequest(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                               stop=self.stop_words(), seed=self.seed, presence_penalty=self.presence_penalty,
                               frequency_penalty=self.frequency_penalty, logit_bias=self.token_bias(),
                               logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0)


class EmbeddingBody(_Body):
    model: str
    input: Any = None
    encoding_format: str | None = None
    dimensions: StrictInt | None = None
    user: str | None = None

    def inputs(self) -> tuple[list[str], list[list[int]]]:
        return embedding_input(self.input)

    def refusals(self) -> None:
        if self.encoding_format not in (None, "float", "base64"):
            raise InvalidArgument(f"encoding_format must be float or base64; got {self.encoding_format[:32]!r}",
                                  reason="INVALID_INPUT", param="encoding_format")
        if self.dimensions is not None and self.dimensions < 1:
            raise InvalidArgument("dimensions must be at least 1", reason="INVALID_INPUT", param="dimensions")


def embedding_input(value: Any, *, integral_floats: bool = False) -> tuple[list[str], list[list[int]]]:
    """OpenAI's embeddings input, (texts, token_ids) with one of them empty: a string, an array of
    strings, an array of token ids (one input) or an array of such arrays. Ids are the endpoint's own
    tokenizer's, as vLLM reads them; the model checks them against its vocabulary, the router that
    each is a whole number an INT32 tensor holds. integral_floats: 3.0 is id 3 (a protobuf Value's
    numbers are all doubles); in OpenAI's JSON an id is an integer."""
    if value is None:
        raise InvalidArgument("input is required", reason="INVALID_INPUT", param="input")
    if isinstance(value, str):
        return [value], []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value, []
    if isinstance(value, list) and all(isinstance(v, list) for v in value):
        return [], [_token_ids(v, f"input[{i}]", integral_floats) for i, v in enumerate(value)]
    if isinstance(value, list) and not any(isinstance(v, (str, list, dict)) for v in value):
        return [], [_token_ids(value, "input", integral_floats)]
    raise InvalidArgument("input must be a string, an array of strings, an array of token ids or an array of "
                          "token-id arrays (not a mix of these)", reason="INVALID_INPUT", param="input")


def _token_ids(values: list, where: str, integral_floats: bool) -> list[int]:
    if not values:
        raise InvalidArgument(f"{where} is an empty token-id array", reason="EMPTY_INPUT", param="input")
    ids = []
    for j, v in enumerate(values):
        if integral_floats and isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKEN_ID:
            raise InvalidArgument(f"{where}[{j}]: {json.dumps(v)[:32]} is not a token id (a whole number from 0 to "
                                  f"{MAX_TOKEN_ID})", reason="INVALID_INPUT", param="input")
        ids.append(v)
    return ids


def parse(body_type: type[_Body], data: bytes) -> Any:
    """The body, checked against OpenAI's schema; a 400 naming the field otherwise. The content-type
    is not checked: `curl -d` sends form-urlencoded, and the body decides (as the transcoder did)."""
    try:
        raw = json.loads(data or b"null")
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"the body is not valid JSON: {str(exc)[:200]}", reason="INVALID_BODY") from exc
    if not isinstance(raw, dict):
        raise InvalidArgument("the body must be a JSON object", reason="INVALID_BODY")
    try:
        body = body_type.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
        param = _param(loc)
        raise InvalidArgument(f"{param}: {error['msg']}" if param else error["msg"], reason="INVALID_INPUT",
                              param=param or None) from exc
    if unknown := body.unknown_fields():
        log.info("ignored fields that are not part of OpenAI's API", fields=unknown[:20])
    return body


# Pydantic names the member of a union an error is about (str | list[str]); they are not fields.
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before"}


# responses ---------------------------------------------------------------------------------------------------

def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sse(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """A generation's usage; prompt_tokens_details.cached_tokens: of the prompt, the tokens whose KV cache
    the replica reused (prefix reuse)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


@dataclass
class ChunkWriter:
    """The stream events of one chat completion or completion, in OpenAI's shape."""

    id: str
    created: int
    model: str
    object: str
    include_usage: bool

    def event(self, choices: list[dict[str, Any]], usage_: dict[str, Any] | None = None) -> bytes:
        out: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                               "system_fingerprint": None, "choices": choices}
        if self.include_usage:  # null on every chunk but the extra last one, as OpenAI sends it
            out["usage"] = usage_
        return sse(out)


def chat_logprobs(entries: tuple[dict, ...] | None) -> dict[str, Any] | None:
    """OpenAI's chat logprobs object (None when the request did not ask for them)."""
    return None if entries is None else {"content": list(entries), "refusal": None}


def completion_logprobs(entries: tuple[dict, ...] | None, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, top_logprobs as {token: logprob} per token."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def chat_choice(*, index: int = 0, delta: dict[str, str] | None = None, finish_reason: str | None = None,
                logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_choice(*, index: int = 0, text: str = "", finish_reason: str | None = None,
                      logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A message's tool call; with index, a stream's tool-call delta."""
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index, **out}


def chat_message_choice(index: int, text: str, finish_reason: str, logprobs: dict[str, Any] | None,
                        calls: list[ToolCall] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:  # as OpenAI answers a call: content null unless the model also wrote words
        message.update(content=text or None, tool_calls=[tool_call(c) for c in calls])
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_object(kind: str, generations: list, choices: list[dict[str, Any]]) -> bytes:
    """A chat.completion or text_completion: the usage counts the prompt once, every choice's tokens."""
    first = generations[0]
    return dumps({"id": first.id if kind == "chat.completion" else first.id.replace("chatcmpl-", "cmpl-"),
                  "object": kind, "created": first.created, "model": first.model, "system_fingerprint": None,
                  "choices": choices,
                  "usage": usage(first.prompt_tokens, sum(g.completion_tokens for g in generations),
                                 first.cached_tokens)})


def embeddings(*, model: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str | None,
               dimensions: int | None) -> bytes:
    if dimensions is not None and dimensions != vectors.shape[1]:
        raise _refuse("dimensions", f"endpoint {model} gives {vectors.shape[1]}-dimensional embeddings and cannot "
                      "shorten them (its model was not trained to be truncated)")
    if encoding_format == "base64":  # OpenAI's: base64 of the little-endian float32 array
        little = vectors.astype("<f4", copy=False)
        data = [base64.b64encode(row.tobytes()).decode() for row in little]
    else:
        data = vectors.tolist()
    return dumps({"object": "list", "model": model,
                  "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
                  "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
