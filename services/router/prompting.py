"""Request checks and prompt rendering: the chat template comes from the
model's catalog metadata and renders in the bounded sandbox (shared.validation),
compiled once per template text, in a small thread pool off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Template

from shared.errors import DeadlineExceeded, InvalidArgument
from shared.templating import TEMPLATE_RENDER_SECONDS, compile_template, render_template

from .backends import Sampling
from .structured_output import check_json_schema

if TYPE_CHECKING:
    from .tools import ToolCall

ROLES = ("system", "user", "assistant")
MAX_STOP_WORDS = 4
MAX_STOP_LENGTH = 64
# ChatML, the template of the bundled SmolLM2 and many instruct models, when the catalog gives none.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE = "the model's chat template"
PROMPT_TEMPLATE = "the experiment's prompt template"
# Renders run here, not on the event loop nor in its default pool: a slow template delays only other renders.
_RENDER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chat-template")
# The render stops itself at TEMPLATE_RENDER_SECONDS; this wait only covers time queued behind other renders.
RENDER_WAIT_SECONDS = 4 * TEMPLATE_RENDER_SECONDS


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str = ""
    # An assistant message's calls, and the call a tool message answers (tools.model_messages renders both).
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class SamplingRequest:
    """A request's sampling parameters as the caller gave them (None: not given). Both surfaces,
    the typed gRPC/envelope API and OpenAI's /v1, fill this, so both accept and refuse the same."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # "text", "json_object" or "json_schema" (with json_schema: the schema as a dict)
    response_format: str | None = None
    json_schema: dict[str, Any] | None = None
    # Token id -> bias (-100 to 100), added to the logits before sampling.
    logit_bias: dict[int, float] | None = None
    # The log-probability of each token, with the top_logprobs likeliest alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    # The name of max_tokens as the caller wrote it (OpenAI's newer max_completion_tokens).
    max_tokens_param: str = "max_tokens"
    # With tools: the JSON schema of the answer (tools.Tools.guide, checked), in place of response_format.
    tools_guide: str = ""


RESPONSE_FORMATS = ("text", "json_object", "json_schema")
JSON_SCHEMA_PARAM = "response_format.json_schema.schema"
SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20


def check_messages(messages: list[Message]) -> list[Message]:
    if not messages:
        raise InvalidArgument("messages must not be empty", reason="EMPTY_INPUT", param="messages")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {m.role[:32]!r}",
                                  reason="INVALID_ROLE", param=f"messages[{i}].role")
    if not any(m.content.strip() for m in messages):
        raise InvalidArgument("messages have no content", reason="EMPTY_INPUT", param="messages")
    return messages


def _range(param: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if not (low < value if low_open else low <= value) or not value <= high:
        raise InvalidArgument(f"{param} must be {'greater than' if low_open else 'at least'} {low:g} and at most "
                              f"{high:g}; got {value:g}", reason="INVALID_SAMPLING", param=param)


def check_sampling(request: SamplingRequest, *, default_max_tokens: int, limit: int) -> Sampling:
    max_tokens = default_max_tokens if request.max_tokens is None else request.max_tokens
    if not 1 <= max_tokens <= limit:
        raise InvalidArgument(f"{request.max_tokens_param} must be between 1 and {limit}; got {max_tokens}",
                              reason="INVALID_MAX_TOKENS", param=request.max_tokens_param)
    temperature = 0.7 if request.temperature is None else request.temperature
    _range("temperature", temperature, 0.0, 2.0)
    top_p = 1.0 if request.top_p is None else request.top_p
    _range("top_p", top_p, 0.0, 1.0, low_open=True)
    stop = request.stop
    if len(stop) > MAX_STOP_WORDS or any(not s or len(s) > MAX_STOP_LENGTH for s in stop):
        raise InvalidArgument(f"stop takes at most {MAX_STOP_WORDS} non-empty strings of at most "
                              f"{MAX_STOP_LENGTH} characters", reason="INVALID_STOP", param="stop")
    for param in ("presence_penalty", "frequency_penalty"):
        if (value := getattr(request, param)) is not None:
            _range(param, value, -2.0, 2.0)
    if request.seed is not None and not SEED_RANGE[0] <= request.seed <= SEED_RANGE[1]:
        raise InvalidArgument("seed must be a 64-bit integer", reason="INVALID_SAMPLING", param="seed")
    bias = request.logit_bias or {}
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidArgument(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens; got {len(bias)}",
                              reason="INVALID_SAMPLING", param="logit_bias")
    for token, value in bias.items():
        if token < 0:
            raise InvalidArgument(f"logit_bias: {token} is not a token id", reason="INVALID_SAMPLING",
                                  param="logit_bias")
        _range(f"logit_bias[{token}]", value, -100.0, 100.0)
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {request.top_logprobs}",
                              reason="INVALID_SAMPLING", param="top_logprobs")
    guide_type, guide = ("json_schema", request.tools_guide) if request.tools_guide else ("", "")
    if request.response_format not in (None, "", "text"):
        if request.response_format not in RESPONSE_FORMATS:
            raise InvalidArgument(f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}; got "
                                  f"{request.response_format[:32]!r}", reason="INVALID_RESPONSE_FORMAT",
                                  param="response_format.type")
        if request.response_format == "json_object":
            guide_type = "json"
        else:
            if not isinstance(request.json_schema, dict) or not request.json_schema:
                raise InvalidArgument("response_format json_schema needs json_schema.schema, a JSON Schema object",
                                      reason="INVALID_RESPONSE_FORMAT", param=JSON_SCHEMA_PARAM)
            guide_type, guide = "json_schema", check_json_schema(request.json_schema, JSON_SCHEMA_PARAM)
    return Sampling(max_tokens, temperature, top_p, tuple(stop), seed=request.seed,
                    presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
                    guide_type=guide_type, guide=guide, logit_bias=tuple(sorted(bias.items())),
                    logprobs=request.logprobs, top_logprobs=request.top_logprobs)


async def render_chat(metadata: dict[str, Any], messages: list[Message], *, system_template: str | None = None,
                      template_variables: dict[str, Any] | None = None, system_suffix: str = "") -> str:
    """The model's prompt for a chat. With system_template (an experiment's), that template, rendered
    with template_variables, replaces the caller's system messages; both render in one trip to the pool.
    system_suffix (the tools' instructions) ends the system message, whichever it is."""
    source = metadata.get("chat_template") or DEFAULT_CHAT_TEMPLATE
    if not isinstance(source, str):  # registered before the registry checked metadata
        raise InvalidArgument(f"{CHAT_TEMPLATE} is not a string; register a new model version with a valid one",
                              reason="TEMPLATE_ERROR")
    if system_template is None:
        messages = with_system_suffix(messages, system_suffix)
        if source == DEFAULT_CHAT_TEMPLATE:
            return chatml(messages)  # the platform's own template: no trip to the pool
    variables = {"messages": [message_variables(m) for m in messages],
                 "add_generation_prompt": True}
    render = _render_chat_now if system_template is None else functools.partial(
        _render_with_system_now, system_template, template_variables or {}, system_suffix)
    return await _render_in_pool(render, source, variables, CHAT_TEMPLATE)


def with_system_suffix(messages: list[Message], suffix: str) -> list[Message]:
    """messages with suffix at the end of the first system message (a new first one if there is none)."""
    if not suffix:
        return messages
    at = next((i for i, m in enumerate(messages) if m.role == "system"), None)
    if at is None:
        return [Message("system", suffix), *messages]
    system = messages[at]
    return [*messages[:at], Message("system", f"{system.content}\n\n{suffix}" if system.content.strip() else suffix,
                                    system.name), *messages[at + 1:]]


def chatml(messages: list[Message]) -> str:
    """DEFAULT_CHAT_TEMPLATE's render, written out (the same text, tested): it is what the bundled
    models and most chat models use, and its cost is linear in the messages, so it renders on the
    event loop instead of a worker thread (a hop per request: about a tenth of the router's CPU)."""
    return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def message_variables(message: Message) -> dict[str, str]:
    """A message as a chat template sees it: role, content, and name when the caller gave one."""
    return ({"role": message.role, "content": message.content, "name": message.name} if message.name
            else {"role": message.role, "content": message.content})


async def render_prompt_template(source: str, variables: dict[str, Any]) -> str:
    """An experiment's prompt template: variables the request does not give render as empty."""
    return await _render_in_pool(_render_prompt_now, source, variables, PROMPT_TEMPLATE)


async def _render_in_pool(render: Callable[[str, dict[str, Any]], str], source: str, variables: dict[str, Any],
                          what: str) -> str:
    rendering = asyncio.get_running_loop().run_in_executor(_RENDER_POOL, render, source, variables)
    try:
        async with asyncio.timeout(RENDER_WAIT_SECONDS):
            return await rendering
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{what} did not render within {RENDER_WAIT_SECONDS:g}s; "
                               "the router is busy rendering, retry", reason="TEMPLATE_RENDER_TIMEOUT") from exc


def _render_chat_now(source: str, variables: dict[str, Any]) -> str:
    """In a worker thread: compile (cached) and render within the sandbox's bounds."""
    return render_template(_compiled(source), variables, CHAT_TEMPLATE)


def _render_with_system_now(system_source: str, system_variables: dict[str, Any], system_suffix: str, source: str,
                            variables: dict[str, Any]) -> str:
    system = _render_prompt_now(system_source, system_variables)
    if system_suffix:
        system = f"{system}\n\n{system_suffix}" if system.strip() else system_suffix
    kept = [m for m in variables["messages"] if m["role"] != "system"]
    messages = [{"role": "system", "content": system}, *kept] if system.strip() else kept
    return _render_chat_now(source, {**variables, "messages": messages})


def _render_prompt_now(source: str, variables: dict[str, Any]) -> str:
    return render_template(_compiled_prompt(source), variables, PROMPT_TEMPLATE)


# Compiling is the slow part of Jinja2: once per template text, in the worker thread of the first
# render that needs it. Endpoints and experiments share a handful of template texts.
@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    return compile_template(source, CHAT_TEMPLATE)


@functools.lru_cache(maxsize=256)
def _compiled_prompt(source: str) -> Template:
    return compile_template(source, PROMPT_TEMPLATE, lenient=True)


def model_stop_words(metadata: dict[str, Any]) -> tuple[str, ...]:
    stop = metadata.get("stop") or ()
    return tuple(s for s in stop if isinstance(s, str))
