"""Structured output that took replicas down (issue 21, item 1), through the real gateway to real
llama.cpp replicas: each request is a 400 in OpenAI's error shape naming the field, the replicas keep
their processes (no model process restarted, no shared memory left behind), and the next request of
another user is answered. A grammar that reaches the model all the same (sent to the replica itself)
is refused by the model, which keeps serving; and a request whose model process dies under it is
answered 500 with `x-should-retry: false`, not passed on to the other replica.

On an endpoint of this module's own with two replicas of the stack's SmolLM2 model, the last test
kills one of its model processes."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from deployment.runtimes.triton import shm_prefix
from shared.settings import REPLICA_KEY_HEADER, REPLICA_KEY_METADATA

from ..helpers import (
    ADMIN, OPENAI_HEADERS, assert_envelope, assert_refused, deploy, deploy_body, openai_post, program, wait_for,
)
from ..triton_helpers import generation_inputs, infer_input

NAME = "structured-output"
SCHEMA = "response_format.json_schema.schema"


@pytest.fixture(scope="module")
def endpoint(infer) -> dict:
    body = deploy_body(infer.chat["modelId"], name=NAME, minReplicas=2, maxReplicas=2)
    ep = assert_envelope(deploy(infer.gateway, body), 200, "success")["data"]
    infer.wait(ep["id"], "healthy")
    wait_for("the router routes to both replicas",
             lambda: (route := infer.router.table.get(NAME)) is not None and len(route.replicas) == 2)
    yield ep
    infer.undeploy(ep)


def replicas(infer, endpoint: dict) -> list[dict]:
    """Its replicas as the local runtime records them: tritonserver pid and ports."""
    return json.loads((infer.settings.serving_dir / endpoint["id"] / "state.json").read_text())["replicas"]


def processes(infer, endpoint: dict) -> set[tuple[int, str]]:
    """Every live process of its replicas, tritonservers and model processes (stubs)."""
    return {(p.pid, p.name()) for p in infer.replica_processes(endpoint["id"]) if p.is_running()}


def segments(infer, endpoint: dict) -> set[str]:
    return {path.name for r in replicas(infer, endpoint)
            for path in Path("/dev/shm").glob(f"{shm_prefix(r['grpc_port'])}*")}


def chat(schema: dict, **extra) -> dict:
    """The issue's request, with the schema of each report."""
    return {"model": NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "Give JSON"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, **extra}


def answered_for_another_user(infer) -> None:
    r = requests.post(f"{infer.gateway.url}/v1/chat/completions", timeout=120,
                      headers={**OPENAI_HEADERS, "X-User-Id": "another-user"},
                      json={"model": NAME, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


TRIGGERS = {
    "maxLength 100000": ({"type": "string", "maxLength": 100000}, f"{SCHEMA}.maxLength"),
    "a property name with a quote and a backslash": (
        {"type": "object", "properties": {'say "hi" \\ now': {"type": "string"}}, "required": ['say "hi" \\ now']},
        f"{SCHEMA}.properties"),
    "maxItems 10000 with minItems 1": (
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 10000}, f"{SCHEMA}.maxItems"),
    "a pattern repeated 100000 times": ({"type": "string", "pattern": "^(ab){1,100000}$"}, f"{SCHEMA}.pattern"),
    "maxItems 100000": ({"type": "array", "items": {"type": "integer"}, "maxItems": 100000}, f"{SCHEMA}.maxItems"),
    "an enum of 10000 values": ({"enum": [f"value-{i}" for i in range(10000)]}, SCHEMA),  # 2 s a token
    "a pattern escape llama.cpp does not know": ({"type": "string", "pattern": "^\\d{3}$"}, f"{SCHEMA}.pattern"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_a_schema_that_crashed_replicas_is_a_400_naming_the_field(infer, endpoint, trigger, stream):
    schema, param = TRIGGERS[trigger]
    before, shm_before = processes(infer, endpoint), segments(infer, endpoint)

    error = assert_refused(openai_post(infer.gateway, "/v1/chat/completions", chat(schema, stream=stream)), param)
    assert error["code"] == "invalid_argument" and error["message"].startswith(param)

    answered_for_another_user(infer)
    assert processes(infer, endpoint) == before and len(before) == 4  # two tritonservers, two model processes
    assert segments(infer, endpoint) <= shm_before


def test_the_enveloped_api_refuses_the_same(infer, endpoint):
    # The typed API's schema is a protobuf Struct: its numbers arrive as doubles (100000.0).
    before = processes(infer, endpoint)
    r = requests.post(f"{infer.gateway.api}/serve/{NAME}/chat", headers=ADMIN, timeout=120, json={
        "messages": [{"role": "user", "content": "Give JSON"}], "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "string", "maxLength": 100000}}}})
    assert assert_envelope(r, 400, "error")["message"].startswith(f"{SCHEMA}.maxLength is 100000; at most 1000")
    answered_for_another_user(infer)
    assert processes(infer, endpoint) == before


def test_a_schema_within_the_bounds_is_answered_as_json(infer, endpoint):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
              "required": ["name", "code"], "additionalProperties": False}
    r = openai_post(infer.gateway, "/v1/chat/completions",
                    chat(schema, max_tokens=48, temperature=0,
                         messages=[{"role": "user", "content": "Name an airport and its code."}]))
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]
    if answer["finish_reason"] == "stop":  # else max_tokens cut it
        assert set(json.loads(answer["message"]["content"])) == {"name", "code"}


# ------------------------------------------------------------------ the model, the last line of defence

def generate_on_the_replica(infer, replica: dict, schema: dict) -> str:
    """One guided generation sent to the replica's own gRPC port, around the router; its text, or raises."""
    key = infer.settings.replica_key()
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{replica['grpc_port']}")
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)),
                            headers={REPLICA_KEY_METADATA: key} if key else None)
        inputs = generation_inputs("<|im_start|>user\nGive JSON<|im_end|>\n<|im_start|>assistant\n",
                                   max_tokens=4, stream=False)
        inputs += [infer_input("guided_decoding_guide_type", ["json_schema"], "BYTES"),
                   infer_input("guided_decoding_guide", [json.dumps(schema)], "BYTES")]
        client.async_stream_infer("llm", inputs)
        result, error = responses.get(timeout=120)
        if error is not None:
            raise error
        return result.as_numpy("text_output")[0].decode()
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("schema,why", [
    ({"type": "string", "pattern": "^\\d+$"}, "llama.cpp refuses the grammar of this JSON schema: unknown escape"),
    ({"type": "object", "properties": {'a"b': {"type": "string"}}},
     "llama.cpp refuses the grammar of this JSON schema: expecting newline or end"),
    ({"type": "string", "maxLength": 100000}, "asks for a repetition of 100000"),
    ({"type": "string", "pattern": "^" + "(" * 5 + "a{0,999}" + ")?" * 5 + "$"}, "nests 1004 groups deep"),
])
def test_a_grammar_llama_cpp_refuses_is_refused_by_the_model_which_keeps_serving(infer, endpoint, schema, why):
    replica = replicas(infer, endpoint)[0]
    before = processes(infer, endpoint)
    with pytest.raises(InferenceServerException) as refused:
        generate_on_the_replica(infer, replica, schema)
    assert refused.value.message().startswith("INVALID_ARG: ") and why in refused.value.message()
    assert generate_on_the_replica(infer, replica, {"type": "string", "maxLength": 1000})  # the bound: taken
    assert processes(infer, endpoint) == before


# ------------------------------------------------------------------ a model process dying under a request

def triton_success_count(infer, replica: dict) -> int:
    r = requests.get(f"http://127.0.0.1:{replica['http_port']}/v2/models/llm/stats", timeout=10,
                     headers={REPLICA_KEY_HEADER: infer.settings.replica_key()})
    r.raise_for_status()
    return r.json()["model_stats"][0]["inference_stats"]["success"]["count"]


def test_a_request_whose_model_process_dies_under_it_is_a_500_not_retried(infer, endpoint):
    """Last in the module: one replica's model process is killed (the deployment service replaces it)."""
    pool, gauge = infer.router.pool, {"endpoint": NAME}
    answer: queue.Queue = queue.Queue()
    # A unary answer (retried on another replica before this change, the client having seen nothing)
    # that runs its whole max_tokens: the end-of-sequence tokens are barred.
    body = {"model": NAME, "max_tokens": 400, "temperature": 0, "logit_bias": {"0": -100, "2": -100},
            "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]}
    threading.Thread(target=lambda: answer.put(openai_post(infer.gateway, "/v1/chat/completions", body))).start()

    # Generating on one replica: it has the request, and its first token came back.
    address = wait_for("the request generating on a replica", lambda: next(
        (a for a in infer.router.table.get(NAME).replicas if pool.outstanding(a) == 1), None)
        if REGISTRY.get_sample_value("llmops_inference_queued_requests", gauge) == 0 else None)
    [victim] = [r for r in replicas(infer, endpoint) if address.endswith(f":{r['grpc_port']}")]
    [other] = [r for r in replicas(infer, endpoint) if r["grpc_port"] != victim["grpc_port"]]
    served_by_other = triton_success_count(infer, other)
    [stub] = [c for c in psutil.Process(victim["pid"]).children() if program(c) == "triton_python_backend_stub"]
    stub.kill()

    r = answer.get(timeout=120)
    assert r.status_code == 500, r.text
    assert r.headers["x-should-retry"] == "false"  # the OpenAI SDKs would retry a 500 otherwise
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "internal", None)
    assert "not tried again" in error["message"]
    assert triton_success_count(infer, other) == served_by_other  # never passed on
    answered_for_another_user(infer)  # the other replica serves
