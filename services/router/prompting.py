"""Request checks and prompt rendering: the chat template comes from the
model's catalog metadata and renders in a sandboxed, immutable Jinja2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.errors import InvalidArgument

ROLES = ("system", "user", "assistant")
MAX_STOP_WORDS = 4
MAX_STOP_LENGTH = 64
# ChatML, the template of the bundled SmolLM2 and many instruct models, when the catalog gives none.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_ENV = ImmutableSandboxedEnvironment()


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


def render_chat(metadata: dict[str, Any], messages: list[Message]) -> str:
    source = metadata.get("chat_template") or DEFAULT_CHAT_TEMPLATE
    try:
        return _ENV.from_string(source).render(
            messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True)
    except TemplateError as exc:
        raise InvalidArgument(f"the model's chat template failed to render: {exc}", reason="TEMPLATE_ERROR") from exc


def model_stop_words(metadata: dict[str, Any]) -> tuple[str, ...]:
    stop = metadata.get("stop") or ()
    return tuple(s for s in stop if isinstance(s, str))
