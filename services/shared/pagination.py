"""AIP-158 pagination: page_size bounds and opaque page tokens."""

from __future__ import annotations

import asyncio
import base64
import json

from .errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("pageSize must not be negative", reason="INVALID_PAGE_SIZE")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(offset: int, query: dict) -> str:
    raw = json.dumps({"o": offset, "q": query}, sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, query: dict) -> int:
    """Offset encoded in token; the token must come from the same query."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        same_query = data["q"] == json.loads(json.dumps(query, sort_keys=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("pageToken is not a token this API issued", reason="INVALID_PAGE_TOKEN") from exc
    if offset < 0 or not same_query:
        raise InvalidArgument("pageToken belongs to a different query", reason="INVALID_PAGE_TOKEN")
    return offset


def next_token(offset: int, size: int, fetched: int, query: dict) -> str:
    """Callers fetch size + 1 rows; a token only when that extra row exists."""
    return encode_token(offset + size, query) if fetched > size else ""


async def fetch_page(fetch, *, requested_size: int, token: str, query: dict) -> tuple[list, str]:  # noqa: ANN001
    """Run fetch(offset=, limit=) in a worker thread; return one page and the next token."""
    size = page_size(requested_size)
    offset = decode_token(token, query)
    items = await asyncio.to_thread(fetch, offset=offset, limit=size + 1)
    return items[:size], next_token(offset, size, len(items), query)
