"""gateway/request_fields.lua run directly in LuaJIT (what Envoy embeds) through lupa: its JSON
reader against protobuf's own JSON parser (json_format, strict about unknown fields), and the
tables rendered into it from the protos."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import luajit21

from llmops.v1 import deployment_pb2, experiment_pb2, inference_pb2, registry_pb2
from shared import api, gateway


RUNTIME = luajit21.LuaRuntime(unpack_returned_tuples=True)


@pytest.fixture(scope="module")
def lua():
    return RUNTIME.execute(gateway.request_fields_lua() + "\nreturn {body_problem = body_problem, route_of = route_of}")


def problem(lua, body: str | bytes, message, bound: dict | None = None) -> str | None:
    """The filter's 400 message for body read as message (a class or a full name); None: it passes."""
    name = message if isinstance(message, str) else message.DESCRIPTOR.full_name
    return lua.body_problem(body, name, None if bound is None else RUNTIME.table_from(bound))


# ------------------------------------------------------------------ the issue's bodies


@pytest.mark.parametrize("message,body,expected", [
    (deployment_pb2.DeployEndpointRequest,
     {"modelId": "m", "environment": "dev", "route": "/r", "minReplica": 3, "autoscale": {"cpuUtilization": 10}},
     'unknown fields in the request body: "minReplica" (did you mean "minReplicas"?), '
     '"autoscale" (did you mean "autoscalePolicy"?)'),
    (registry_pb2.CreateModelRequest, {"name": "n", "metdata": {}},
     'unknown field in the request body: "metdata" (did you mean "metadata"?)'),
    (registry_pb2.CreatePromptTemplateRequest, {"name": "n", "endpont": "e"},
     'unknown field in the request body: "endpont" (did you mean "endpoint"?)'),
    (inference_pb2.ChatRequest, {"messages": [], "max_token": 2},
     'unknown field in the request body: "max_token" (did you mean "max_tokens"?)'),
    (experiment_pb2.CreateExperimentRequest, {"templateAId": "a", "templateBId": "b", "metric": "m"},
     "allocation is required"),
    (experiment_pb2.CreateExperimentRequest, {"allocation": None}, "allocation is required"),
    (experiment_pb2.CreateExperimentRequest, {"allocaton": 5},   # the misspelling, not the missing field
     'unknown field in the request body: "allocaton" (did you mean "allocation"?)'),
    (deployment_pb2.UpdateEndpointRequest, {"autoscale_policy": {"cpu_utilisation": 5}},
     'unknown field in the request body: "autoscale_policy.cpu_utilisation" (did you mean "cpu_utilization"?)'),
    (inference_pb2.ChatRequest, {"messages": [{"role": "user"}, {"Role": "user"}]},
     'unknown field in the request body: "messages[1].Role" (did you mean "role"?)'),
    (inference_pb2.ChatRequest, {"nmae": "x"}, 'unknown field in the request body: "nmae" (did you mean "name"?)'),
    (inference_pb2.ChatRequest, {"zzzz": 1}, 'unknown field in the request body: "zzzz"'),
])
def test_what_the_issue_sent_is_named(lua, message, body, expected):
    assert problem(lua, json.dumps(body), message) == expected


@pytest.mark.parametrize("message,body", [
    (experiment_pb2.CreateExperimentRequest, {"allocation": 0}),
    (deployment_pb2.DeployEndpointRequest, {"model_id": "m", "min_replicas": 1, "autoscale_policy": None}),
    (inference_pb2.ChatRequest, {"variables": {"any": {"key": [{"at": "all"}]}}, "messages": None,
                                 "response_format": {"json_schema": {"schema": {"free": True}}}}),
    (inference_pb2.EmbedRequest, {"input": {"a": "Value takes any JSON"}}),
])
def test_known_fields_in_either_name_pass(lua, message, body):
    assert problem(lua, json.dumps(body), message) is None


def test_a_field_the_path_binds_need_not_be_in_the_body(lua):
    # No REQUIRED number is bound by a path today; the rule still holds for one that would be.
    assert problem(lua, "{}", experiment_pb2.CreateExperimentRequest, {"allocation": True}) is None


# ------------------------------------------------------------------ the JSON the transcoder's parser takes


@pytest.mark.parametrize("body,expected", [
    ("{max_token: 2}", '"max_token"'),                       # a bare key
    ("{'max_token': 2}", '"max_token"'),                     # single quotes
    ('{"messages": [{"role": "u", "rol": 1},], }', '"messages[0].rol"'),   # commas before ] and }
    ('{\v"max_token"\f:\t2\r\n}', '"max_token"'),            # \v and \f are blanks to it
    ('{"\\u006dax_tokens": 2, "\\u006dax_token": 2}', '"max_token"'),  # escaped keys are read
    ('{"max\\u005ftoken": 2}', '"max_token"'),
    ('{"emoji\\ud83d\\ude00": 1}', '"emoji\U0001F600"'),       # a surrogate pair
    ('{"a\\"b": 1}', '"a"b"'),
    ('{"content": "}{][\\"", "x": 1}', '"x"'),               # brackets and quotes in strings
    ("{'stop': ['\\'', \"'\"], 'x': 1}", '"x"'),
])
def test_the_lenient_json_the_transcoder_reads(lua, body, expected):
    assert expected in problem(lua, body, inference_pb2.ChatRequest)


@pytest.mark.parametrize("body", [
    "", "   ", "null", "[]", '"x"', "{", '{"x": 1', '{"x" 1}', '{"x": 1,, "y": 2}', "{1a: 1}", '{"x": }',
    '{"x": "unterminated}', b'{"na\xffme": 1}',               # not UTF-8: the transcoder's 400
    '{"\\u12": 1}',
])
def test_what_it_cannot_read_is_left_to_the_transcoder(lua, body):
    assert problem(lua, body, inference_pb2.ChatRequest) is None


def test_nesting_deeper_than_anything_typed_costs_no_recursion(lua):
    deep = '{"variables": ' + '{"a": [' * 50_000 + "1" + "]}" * 50_000 + ', "x": 1}'
    assert problem(lua, deep, inference_pb2.ChatRequest) == 'unknown field in the request body: "x"'


def test_long_paths_are_cut_and_many_fields_counted(lua):
    body = {"\u00e9" * 100: 1, **{f"extra{i}": i for i in range(7)}}
    got = problem(lua, json.dumps(body, ensure_ascii=False), registry_pb2.CreateModelRequest)
    assert got.startswith('unknown fields in the request body: "' + "\u00e9" * 32 + '..."'), got
    assert got.endswith('"extra3", and 3 more'), got


# ------------------------------------------------------------------ against protobuf's parser


def values(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    """A valid JSON value of a field, as protobuf's JSON mapping writes it."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return st.dictionaries(st.text(max_size=4), values(value, depth), max_size=2)
    if field.is_repeated:
        return st.lists(single(field, depth), max_size=2)
    return single(field, depth)


def single(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name in ("google.protobuf.Struct", "google.protobuf.Value"):
            return st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=3), max_size=2)
        return messages(field.message_type, depth + 1) if depth < 4 else st.just({})
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(-1e6, 1e6, width=32)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return st.integers(-1000, 1000)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        return st.integers(0, 1000)
    return st.text(max_size=6)


def messages(message, depth: int = 0) -> st.SearchStrategy:
    """Valid JSON objects of a message: any subset of its fields, each under its JSON or proto name."""
    return st.fixed_dictionaries({}, optional={f.name: st.tuples(st.booleans(), values(f, depth))
                                               for f in message.fields}).map(
        lambda d: {(message.fields_by_name[k].json_name if use_json else k): v
                   for k, (use_json, v) in d.items()})


def typed_objects(value: dict, message, path: str = "") -> list[tuple[dict, object, str]]:
    found = [(value, message, path)]
    for key, item in value.items():
        field = message.fields_by_name.get(key) or next(f for f in message.fields if f.json_name == key)
        inner = field.message_type
        if inner is None or inner.full_name.startswith("google.protobuf.") or inner.GetOptions().map_entry:
            continue
        prefix = f"{path}.{key}" if path else key
        for n, element in (enumerate(item) if isinstance(item, list) else [(None, item)]):
            found += typed_objects(element, inner, prefix if n is None else f"{prefix}[{n}]")
    return found


BODIES = sorted({b.message.full_name: b.message for b in api.request_bodies()}.items())
CLASSES = {c.DESCRIPTOR.full_name: c for module in (deployment_pb2, experiment_pb2, inference_pb2, registry_pb2)
           for c in vars(module).values() if hasattr(c, "DESCRIPTOR") and hasattr(c.DESCRIPTOR, "fields_by_name")}


@pytest.mark.parametrize("name,message", BODIES, ids=[n for n, _ in BODIES])
@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(data=st.data(), key=st.text(min_size=1, max_size=8), ascii_only=st.booleans(), spaced=st.booleans())
def test_it_agrees_with_protobufs_parser(lua, name, message, data, key, ascii_only, spaced):
    body = data.draw(messages(message))
    for f in message.fields:  # the REQUIRED numbers the gateway insists on
        if api.unseen_when_missing(f):
            body.setdefault(f.json_name, 1)
    separators = (", ", ": ") if spaced else (",", ":")

    def dump(value: dict) -> str:
        return json.dumps(value, ensure_ascii=ascii_only, separators=separators)

    json_format.Parse(dump(body), CLASSES[name]())  # valid: protobuf takes it
    assert problem(lua, dump(body), name) is None, dump(body)

    target, where, at = data.draw(st.sampled_from(typed_objects(body, message)))
    if key in {n for f in where.fields for n in (f.name, f.json_name)}:
        return
    target[key] = data.draw(st.none() | st.integers() | st.just({"a": [1]}))
    with pytest.raises(json_format.ParseError):  # unknown to protobuf
        json_format.Parse(dump(body), CLASSES[name]())
    assert f'"{at + "." if at else ""}{key}"' in problem(lua, dump(body), name), dump(body)


# ------------------------------------------------------------------ the tables and the routes


def test_the_only_required_field_the_gateway_checks_is_an_experiments_allocation():
    checked = {(m.full_name, f.name) for m in {b.message for b in api.request_bodies()}
               for f in m.fields if api.unseen_when_missing(f)}
    assert checked == {("llmops.v1.CreateExperimentRequest", "allocation")}


def test_every_rest_body_but_openais_is_read():
    with_body = {(verb, path) for m in api.methods() if not m.access.internal for verb, path, body in m.http if body}
    read = {(b.verb, b.path) for b in api.request_bodies()}
    assert read == {(verb, path) for verb, path in with_body if not path.startswith("/v1/")}


@pytest.mark.parametrize("verb,path,message", [
    ("POST", "/llm-ops/v1/serving/endpoints", "llmops.v1.DeployEndpointRequest"),
    ("POST", "/llm-ops/v1/serving/endpoints/?dryRun=1", "llmops.v1.DeployEndpointRequest"),  # as the transcoder
    ("POST", "/llm-ops/v1/catalog/models//", "llmops.v1.CreateModelRequest"),
    ("PATCH", "/llm-ops/v1/serving/endpoints/abc", "llmops.v1.UpdateEndpointRequest"),
    ("POST", "/llm-ops/v1/serving/endpoints/abc/rollback", "llmops.v1.RollbackEndpointRequest"),
    ("POST", "/llm-ops/v1/serve/x/chat:stream", "llmops.v1.ChatRequest"),
    ("POST", "/llm-ops/v1/serve/x/chat:stream/", None),      # a literal segment to the transcoder: no route
    ("GET", "/llm-ops/v1/serving/endpoints", None),
    ("POST", "/v1/chat/completions", None),                 # OpenAI's JSON: the router's to read
    ("POST", "/llm-ops/v1/serve/a/b/chat", None),
    ("DELETE", "/llm-ops/v1/serving/endpoints/abc", None),
])
def test_the_routes_read_are_the_transcoders(lua, verb, path, message):
    route = lua.route_of(verb, path)
    assert (route[3] if route is not None else None) == message


def test_a_message_in_a_list_that_cannot_be_read_leaves_the_body_to_the_transcoder(lua):
    assert problem(lua, b'{"messages": [{"r\xffle": 1}], "x": 1}', inference_pb2.ChatRequest) is None


def test_map_values_of_a_message_type_are_read_as_that_message():
    # No request has such a map today; the reader is generic. The tables by hand, as gateway.py writes them.
    prelude = ('local ROUTES = {}\nlocal MESSAGES = {\n'
               '  ["t.M"] = {fields = {labels = {"labels", "t.V", "map"}}, names = {"labels"}, required = {}},\n'
               '  ["t.V"] = {fields = {x = {"x", false, "one"}}, names = {"x"}, required = {}},\n}\n')
    source = prelude + (gateway.GATEWAY_DIR / "request_fields.lua").read_text()
    lua = luajit21.LuaRuntime().execute(source + "\nreturn {body_problem = body_problem}")
    assert lua.body_problem('{"labels": {"any key": {"x": 1}, "b": null, "c": [1]}}', "t.M", None) is None
    assert lua.body_problem('{"labels": {"a": {"x": 1, "xx": 2}}}', "t.M", None) == \
        'unknown field in the request body: "labels.a.xx"'
