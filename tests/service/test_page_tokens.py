"""Page tokens and audit times a caller forged, through the real gateway: each a 400 naming the
parameter, never a 500 (issue 21, item 8). A page token is opaque to clients, but nothing stops a
caller from decoding one and sending it back changed; these are forged the way such a caller would."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import requests

from ..helpers import ADMIN, assert_envelope

# Each list, with the query its tokens are bound to when no filter is given.
LISTS = {
    "/catalog/models": {"type": "", "status": "", "ownerTeam": ""},
    "/prompts/templates": {"name": "", "modelType": "", "endpoint": ""},
    "/serving/endpoints": {"environment": "", "modelId": "", "status": "", "name": ""},
    "/prompts/experiments": {"status": "", "endpoint": ""},
}
AUDIT_LOGS = ["/catalog/audit-records", "/serving/audit-records", "/prompts/audit-records"]
AUDIT_QUERY = {f: "" for f in ("actor", "resource_type", "resource_id", "action", "since", "until")}


def forged(position: object, query: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": position, "q": query}, sort_keys=True).encode()).decode()


def get(gateway, path: str, **params) -> requests.Response:
    return requests.get(f"{gateway.api}{path}", params=params, headers=ADMIN, timeout=30)


def refused(response: requests.Response, parameter: str) -> None:
    error = assert_envelope(response, 400, "error")
    assert parameter in error["message"], error
    assert error["data"] is None


@pytest.mark.parametrize("offset", [2**63, 2**64, 10**30])
@pytest.mark.parametrize("path", list(LISTS))
def test_an_offset_beyond_what_a_database_counts_is_400(gateway, path, offset):
    refused(get(gateway, path, pageToken=forged(offset, LISTS[path])), "pageToken")
    # The largest offset a database counts (int64) is still a page: an empty one, the last.
    data = assert_envelope(get(gateway, path, pageToken=forged(2**63 - 1, LISTS[path])), 200, "success")["data"]
    assert data["nextPageToken"] == "" and not any(isinstance(v, list) and v for v in data.values())


# Deeper than Python's json reads (a RecursionError), yet within the gateway's 8 KiB of headers.
@pytest.mark.parametrize("raw", [b"[" * 4000, b'{"o": ' + b"[" * 3900, b'{"o": 1, "q": ' + b"[" * 3900])
@pytest.mark.parametrize("path", [*LISTS, *AUDIT_LOGS])
def test_a_token_of_deeply_nested_json_is_400(gateway, path, raw):
    refused(get(gateway, path, pageToken=base64.urlsafe_b64encode(raw).decode()), "pageToken")


@pytest.mark.parametrize("position", [
    ["2026-01-01T00:00:00+00:00", 12345],                      # the id a number
    ["2026-01-01T00:00:00+00:00", 1.5],
    ["2026-01-01T00:00:00+00:00", ["a"]],
    ["0001-01-01T00:00:00+14:00", str(uuid.uuid4())],          # year 1, before the first instant in UTC
    ["9999-12-31T23:59:59-14:00", str(uuid.uuid4())],          # after the last
])
@pytest.mark.parametrize("path", AUDIT_LOGS)
def test_a_forged_audit_position_is_400(gateway, path, position):
    refused(get(gateway, path, pageToken=forged(position, AUDIT_QUERY)), "pageToken")


@pytest.mark.parametrize("field,value,within", [
    ("since", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00"),
    ("until", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+14:00"),
    ("since", "0001-01-01T00:59:59+01:00", "0001-01-01T00:00:00Z"),
    ("until", "9999-12-31T23:00:00-01:00", "9999-12-31T23:59:59Z"),
])
@pytest.mark.parametrize("path", AUDIT_LOGS)
def test_a_time_outside_what_utc_can_say_is_400(gateway, path, field, value, within):
    refused(get(gateway, path, **{field: value}), field)
    assert_envelope(get(gateway, path, **{field: within}), 200, "success")  # the first and last instants still filter
