"""The gateway's two Lua filters, run directly in LuaJIT (what Envoy embeds) through
lupa: the JSON scanners they rely on, against Python's own JSON, and the tables
rendered into them from the protos and the status table."""

from __future__ import annotations

import json

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import luajit21

from shared import gateway
from shared.errors import STATUS_TABLE


def load(source: str, *names: str):
    """Run a filter's source and hand back its local functions and tables by name."""
    lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
    exported = lua.execute(source + "\nreturn {" + ", ".join(f"{n} = {n}" for n in names) + "}")
    return lua, exported


@pytest.fixture(scope="module")
def stream_route():
    return load(gateway.stream_route_lua(), "stream_requested", "streamable")[1]


@pytest.fixture(scope="module")
def envelope():
    return load(gateway.envelope_lua(), "status_fields", "json_string", "HTTP_STATUS", "CODE_NAME", "OPENAI_TYPE")


# ------------------------------------------------------------------ stream_route.lua


@pytest.mark.parametrize("body,expected", [
    ('{"stream": true}', True),
    ('{"stream":false}', False),
    ('{ "stream" :\ttrue }', True),
    ('{"messages": [{"role": "user", "content": "x"}], "stream": true}', True),
    ('{"options": {"stream": true}}', False),                    # nested: not the request's
    ('{"content": "\\"stream\\": true"}', False),                # inside a string
    ('{"content": "a \\\\", "stream": true}', True),             # an escaped backslash ends the string
    ('{"stream": true, "stream": false}', False),                # the last one wins, as in protobuf's parser
    ('["stream", true]', False),
    ('{"stream": "true"}', False),
    ('{"stream', False),                                         # unterminated: left to the transcoder
    ("", False),
])
def test_stream_requested(stream_route, body, expected):
    assert stream_route.stream_requested(body) is expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(body=st.dictionaries(st.one_of(st.just("stream"), st.text(max_size=8)), json_values, max_size=4),
       ascii_only=st.booleans(), spaced=st.booleans())
def test_stream_requested_agrees_with_json(stream_route, body, ascii_only, spaced):
    text = json.dumps(body, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))
    assert stream_route.stream_requested(text) is (body.get("stream") is True), text


def test_only_the_paths_with_a_stream_binding_are_read(stream_route):
    for path in ("/llm-ops/v1/serve/chat-model/chat", "/llm-ops/v1/serve/x/completion", "/v1/chat/completions",
                 "/v1/completions"):
        assert stream_route.streamable(path), path
    for path in ("/llm-ops/v1/serve/chat-model/embeddings", "/llm-ops/v1/serve/a/b/chat", "/v1/chat/completions/x",
                 "/llm-ops/v1/serve//chat", "/v1/embeddings", "/llm-ops/v1/catalog/models"):
        assert not stream_route.streamable(path), path


# ------------------------------------------------------------------ envelope.lua


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(code=st.integers(0, 16), message=st.text(), details=st.booleans())
def test_status_fields_reads_what_the_transcoder_writes(envelope, code, message, details):
    _, lua = envelope
    # google.rpc.Status as JSON, the way the transcoder writes it (convert_grpc_status).
    status = {"code": code, "message": message, **({"details": [{"@type": "x", "reason": "y"}]} if details else {})}
    got_code, literal = lua.status_fields(json.dumps(status, ensure_ascii=False, separators=(",", ":")))
    assert got_code == code
    assert json.loads(literal) == message


def test_status_fields_without_a_status_is_nothing(envelope):
    _, lua = envelope
    assert lua.status_fields('{"status":"error","message":"Bad Request","data":null}') == (None, None)
    assert lua.status_fields('{"code":5}') == (5, '""')


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(text=st.text())
def test_json_string_is_valid_json(envelope, text):
    _, lua = envelope
    encoded = lua.json_string(text)
    assert json.loads(encoded) == text


def test_the_status_table_is_the_platforms(envelope):
    _, lua = envelope
    for code, (http, kind) in STATUS_TABLE.items():
        number = code.value[0]
        assert (lua.HTTP_STATUS[number], lua.CODE_NAME[number], lua.OPENAI_TYPE[number]) == \
            (http, code.name.lower(), kind)
    assert set(STATUS_TABLE) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
