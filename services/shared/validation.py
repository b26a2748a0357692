"""Input checks shared by the converters; each raises InvalidArgument (400)
with a message that names the field as the REST user wrote it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from .errors import InvalidArgument

# Endpoint names end up in routes and Kubernetes labels: a DNS label.
# \Z, not $: "$" also matches before a trailing newline, and callers may use .match.
ENDPOINT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
ENDPOINT_ROUTE_PREFIX = "/llm-ops/v1/serve/"


def required(value: str, field: str, *, max_length: int = 256) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required", reason="MISSING_FIELD")
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is longer than {max_length} characters", reason="FIELD_TOO_LONG")
    return value


def one_of(value: str, field: str, allowed: Iterable[str], *, default: str | None = None) -> str:
    allowed = tuple(allowed)
    if not value and default is not None:
        return default
    if value not in allowed:
        shown = value if value else "(empty)"
        raise InvalidArgument(f"{field} must be one of {', '.join(allowed)}; got {shown}",
                              reason="INVALID_ENUM_VALUE")
    return value


def optional_one_of(value: str, field: str, allowed: Iterable[str]) -> str | None:
    """A filter: empty means no filter."""
    return one_of(value, field, allowed) if value else None


def parse_uuid(value: str, field: str) -> uuid.UUID:
    if not value:
        raise InvalidArgument(f"{field} is required", reason="MISSING_FIELD")
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not a valid UUID: {value[:64]}", reason="INVALID_UUID") from exc


def endpoint_name(value: str, field: str = "endpoint") -> str:
    if not ENDPOINT_NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be a lowercase DNS label (a-z, 0-9, '-', at most 63 characters); got {value[:80]!r}",
            reason="INVALID_ENDPOINT_NAME")
    return value
