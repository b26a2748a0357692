"""Request checks and prompt rendering: the chat template comes from the
model's catalog metadata and renders in the bounded sandbox (shared.validation),
compiled once per template text, in a small thread pool off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jinja2 import Template

from shared.errors import DeadlineExceeded, InvalidArgument
from shared.templating import TEMPLATE_RENDER_SECONDS, compile_template, render_template

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


def check_messages(messages: list[Message]) -> list[Message]:
    if not messages:
        raise InvalidArgument("messages must not be empty", reason="EMPTY_INPUT")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {m.role[:32]!r}",
                                  reason="INVALID_ROLE")
    if not any(m.content.strip() for m in messages if m.role == "user"):
        raise InvalidArgument("messages need at least one user message with content", reason="EMPTY_INPUT")
    return messages


def check_sampling(*, max_tokens: int | None, temperature: float | None, top_p: float | None, stop: list[str],
                   default_max_tokens: int, limit: int) -> tuple[int, float, float, tuple[str, ...]]:
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= limit:
        raise InvalidArgument(f"max_tokens must be between 1 and {limit}; got {max_tokens}", reason="INVALID_MAX_TOKENS")
    temperature = 0.7 if temperature is None else temperature
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(f"temperature must be between 0 and 2; got {temperature:g}", reason="INVALID_TEMPERATURE")
    top_p = 1.0 if top_p is None else top_p
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"top_p must be greater than 0 and at most 1; got {top_p:g}", reason="INVALID_TOP_P")
    if len(stop) > MAX_STOP_WORDS or any(not s or len(s) > MAX_STOP_LENGTH for s in stop):
        raise InvalidArgument(f"stop takes at most {MAX_STOP_WORDS} non-empty strings of at most "
                              f"{MAX_STOP_LENGTH} characters", reason="INVALID_STOP")
    return max_tokens, temperature, top_p, tuple(stop)


async def render_chat(metadata: dict[str, Any], messages: list[Message], *, system_template: str | None = None,
                      template_variables: dict[str, Any] | None = None) -> str:
    """The model's prompt for a chat. With system_template (an experiment's), that template, rendered
    with template_variables, replaces the caller's system messages; both render in one trip to the pool."""
    source = metadata.get("chat_template") or DEFAULT_CHAT_TEMPLATE
    if not isinstance(source, str):  # registered before the registry checked metadata
        raise InvalidArgument(f"{CHAT_TEMPLATE} is not a string; register a new model version with a valid one",
                              reason="TEMPLATE_ERROR")
    variables = {"messages": [{"role": m.role, "content": m.content} for m in messages],
                 "add_generation_prompt": True}
    render = _render_chat_now if system_template is None else functools.partial(
        _render_with_system_now, system_template, template_variables or {})
    return await _render_in_pool(render, source, variables, CHAT_TEMPLATE)


async def render_prompt_template(source: str, variables: dict[str, Any]) -> str:
    """An experiment's prompt template: variables the request does not give render as empty."""
    return await _render_in_pool(_render_prompt_now, source, variables, PROMPT_TEMPLATE)


async def _render_in_pool(render: Callable[[str, dict[str, Any]], str], source: str, variables: dict[str, Any],
                          what: str) -> str:
    rendering = asyncio.get_running_loop().run_in_executor(_RENDER_POOL, render, source, variables)
    try:
        return await asyncio.wait_for(rendering, RENDER_WAIT_SECONDS)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{what} did not render within {RENDER_WAIT_SECONDS:g}s; "
                               "the router is busy rendering, retry", reason="TEMPLATE_RENDER_TIMEOUT") from exc


def _render_chat_now(source: str, variables: dict[str, Any]) -> str:
    """In a worker thread: compile (cached) and render within the sandbox's bounds."""
    return render_template(_compiled(source), variables, CHAT_TEMPLATE)


def _render_with_system_now(system_source: str, system_variables: dict[str, Any], source: str,
                            variables: dict[str, Any]) -> str:
    system = _render_prompt_now(system_source, system_variables)
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
