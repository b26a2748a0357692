"""AIP-158 pagination: page_size bounds and opaque page tokens. A page is bounded in
bytes as well as in items: a list whose items carry large metadata ends its page early
(with a next token), so no response outgrows what the gateway passes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from .errors import InvalidArgument

T = TypeVar("T")
M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Protobuf bytes of the items of one page (the first item always fits). JSON of a proto is at most
# about six times its binary size (a string of control characters, each escaped as \u00XX), so a
# page stays well under the gateway's 16 MiB response limit.
MAX_PAGE_BYTES = 1 << 20
# OFFSET is a signed 64-bit integer in SQLite and PostgreSQL: a forged token's larger offset was a 500.
MAX_OFFSET = (1 << 63) - 1


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("pageSize must not be negative", reason="INVALID_PAGE_SIZE")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: object, query: dict) -> str:
    """A page token: where the next page starts (any JSON value), bound to the query it continues."""
    raw = json.dumps({"o": position, "q": query}, sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_position(token: str, query: dict) -> object:
    """The position encoded in token; the token must come from the same query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        position = data["o"]
        same_query = data["q"] == json.loads(json.dumps(query, sort_keys=True))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: a forged, deeply nested one
        raise InvalidArgument("pageToken is not a token this API issued", reason="INVALID_PAGE_TOKEN") from exc
    if not same_query:
        raise InvalidArgument("pageToken belongs to a different query", reason="INVALID_PAGE_TOKEN")
    return position


def decode_token(token: str, query: dict) -> int:
    """Offset encoded in token (0 for none)."""
    if not token:
        return 0
    offset = decode_position(token, query)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument("pageToken is not a token this API issued", reason="INVALID_PAGE_TOKEN")
    return offset


def bounded(messages: list[Message], max_bytes: int = MAX_PAGE_BYTES) -> int:
    """How many of messages, from the first, fit in max_bytes (at least one)."""
    total = 0
    for count, message in enumerate(messages):
        total += message.ByteSize()
        if count and total > max_bytes:
            return count
    return len(messages)


async def fetch_page(fetch: Callable[..., list[T]], convert: Callable[[T], M], *, requested_size: int,
                     token: str, query: dict) -> tuple[list[M], str]:
    """Run fetch(offset=, limit=) in a worker thread; return one page, converted, and the next token.
    The page ends at requested_size items or MAX_PAGE_BYTES, whichever comes first."""
    size = page_size(requested_size)
    offset = decode_token(token, query)
    rows = await asyncio.to_thread(fetch, offset=offset, limit=size + 1)
    page = [convert(row) for row in rows[:size]]
    fits = bounded(page)
    more = len(rows) > fits
    return page[:fits], encode_token(offset + fits, query) if more else ""
