"""A replica answers only the platform (issue 21, item 6): a local caller that goes around the
gateway to a Triton replica's own ports is refused everything but health, whether it asks for a
generation, a KServe inference or a change of Triton's logging; its shared memory is readable by
the platform's user alone; and what a killed replica left in /dev/shm goes when it is replaced.

On an endpoint of this module's own (the echo model: quick to replace), through the real gateway,
the deployment service on the local runtime and real tritonserver processes."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from deployment.runtimes.triton import shm_prefix
from shared.settings import REPLICA_KEY_HEADER, REPLICA_KEY_METADATA

from ..helpers import ADMIN, approved_echo_model, assert_envelope, wait_for

SHM = Path("/dev/shm")
ENDPOINT = "replica-access"


@pytest.fixture(scope="module")
def endpoint(infer) -> dict:
    return infer.deploy_endpoint(ENDPOINT, approved_echo_model(infer.gateway))


def replicas(infer, endpoint: dict) -> list[dict]:
    """The endpoint's replicas as the local runtime records them: pid and ports."""
    return json.loads((infer.settings.serving_dir / endpoint["id"] / "state.json").read_text())["replicas"]


def replica(infer, endpoint: dict) -> dict:
    [one] = replicas(infer, endpoint)
    return one


def target(infer, endpoint: dict, model: str) -> dict:
    """The replica a call goes to: this module's echo endpoint's for `llm` (a decoupled model, which
    only generate and stream calls reach), the stack's embedding endpoint's for `embedding`."""
    return replica(infer, endpoint if model == "llm" else infer.emb)


def segments(grpc_port: int) -> list[Path]:
    return sorted(SHM.glob(f"{shm_prefix(grpc_port)}*"))


def chat_through_the_gateway(infer) -> dict:
    r = requests.post(f"{infer.gateway.api}/serve/{ENDPOINT}/chat", headers=ADMIN, timeout=60,
                      json={"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2})
    return assert_envelope(r, 200, "success")["data"]


def log_settings(http_port: int, key: str) -> dict:
    """Triton's logging settings, asked with the platform's key (what nobody else may change)."""
    r = requests.get(f"http://127.0.0.1:{http_port}/v2/logging", headers={REPLICA_KEY_HEADER: key}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ HTTP: only health answers

HTTP_CALLS = {  # name: (model, method, path, body)
    "generate": ("llm", "POST", "/v2/models/llm/generate", {"text_input": "one two three", "max_tokens": 2}),
    "kserve-infer": ("embedding", "POST", "/v2/models/embedding/infer", {"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["one two three"]}]}),
    "logging": ("llm", "POST", "/v2/logging", {"log_verbose_level": 1}),
    "model-config": ("llm", "GET", "/v2/models/llm/config", None),
    "statistics": ("llm", "GET", "/v2/models/stats", None),
    "repository": ("llm", "POST", "/v2/repository/index", {}),
}


@pytest.mark.parametrize("key", ["", "not-the-key"], ids=["no-key", "wrong-key"])
@pytest.mark.parametrize("call", list(HTTP_CALLS))
def test_the_http_port_refuses_everything_but_health_to_a_caller_without_the_key(infer, endpoint, call, key):
    model, method, path, body = HTTP_CALLS[call]
    r_ = target(infer, endpoint, model)
    headers = {REPLICA_KEY_HEADER: key} if key else {}
    before = log_settings(r_["http_port"], infer.settings.replica_key())

    r = requests.request(method, f"http://127.0.0.1:{r_['http_port']}{path}", json=body, headers=headers, timeout=30)

    assert r.status_code == 403, r.text
    assert r.json() == {"error": f"This API is restricted, expecting header '{REPLICA_KEY_HEADER}'"}
    assert log_settings(r_["http_port"], infer.settings.replica_key()) == before  # nothing changed
    assert requests.get(f"http://127.0.0.1:{r_['http_port']}/v2/health/ready", timeout=10).status_code == 200
    assert chat_through_the_gateway(infer)["choices"]  # the platform's own way in still answers


# ------------------------------------------------------------------ gRPC: the same, on the port the router uses

def _request(model: str, **inputs: tuple[str, str, object]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="outsider")
    for name, (datatype, field, value) in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[1])
        getattr(tensor.contents, field).append(value)
    return request


def _stream_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, metadata) -> list:
    """A generation, as the router asks for one (its answers come as stream messages)."""
    generation = _request("llm", text_input=("BYTES", "bytes_contents", b"one two three"),
                          max_tokens=("INT32", "int_contents", 2))
    return [m.error_message or m.infer_response for m in
            stub.ModelStreamInfer(iter([generation]), metadata=metadata, timeout=30)]


GRPC_CALLS = {  # name: (model, call)
    "stream-infer": ("llm", _stream_infer),
    "infer": ("embedding", lambda stub, md: stub.ModelInfer(
        _request("embedding", text=("BYTES", "bytes_contents", b"one two three")), metadata=md, timeout=30)),
    "logging": ("llm", lambda stub, md: stub.LogSettings(service_pb2.LogSettingsRequest(
        settings={"log_verbose_level": service_pb2.LogSettingsRequest.SettingValue(uint32_param=1)}),
        metadata=md, timeout=30)),
    "model-metadata": ("llm", lambda stub, md: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="llm"),
                                                                  metadata=md, timeout=30)),
}


@pytest.mark.parametrize("key", ["", "not-the-key"], ids=["no-key", "wrong-key"])
@pytest.mark.parametrize("call", list(GRPC_CALLS))
def test_the_grpc_port_refuses_everything_but_health_to_a_caller_without_the_key(infer, endpoint, call, key):
    model, send = GRPC_CALLS[call]
    r_ = target(infer, endpoint, model)
    metadata = ((REPLICA_KEY_METADATA, key),) if key else ()
    before = log_settings(r_["http_port"], infer.settings.replica_key())
    with grpc.insecure_channel(f"127.0.0.1:{r_['grpc_port']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        with pytest.raises(grpc.RpcError) as refused:
            send(stub, metadata)

        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"expecting header '{REPLICA_KEY_METADATA}'" in refused.value.details()
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready  # health stays open
    assert log_settings(r_["http_port"], infer.settings.replica_key()) == before
    assert chat_through_the_gateway(infer)["choices"]


# ------------------------------------------------------------------ the replica's shared memory

def test_a_replicas_shared_memory_is_readable_by_the_platforms_user_alone(infer, endpoint):
    chat_through_the_gateway(infer)  # prompts and outputs have passed through it
    found = segments(replica(infer, endpoint)["grpc_port"])
    assert found, "the replica's Python-backend segments, one per model instance"
    for segment in found:
        info = segment.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.getuid()), segment


def test_what_a_killed_replica_left_in_shared_memory_is_removed_when_it_is_replaced(infer, endpoint):
    old = replica(infer, endpoint)
    left = segments(old["grpc_port"])
    assert left
    os.kill(old["pid"], signal.SIGKILL)  # tritonserver: its model process is left, and its regions

    def replaced() -> dict | None:
        now = replicas(infer, endpoint)
        return now[0] if len(now) == 1 and now[0]["pid"] != old["pid"] else None

    new = wait_for("the runtime replaces the killed replica", replaced)  # after it stopped what was left of it

    assert not any(path.exists() for path in left), [p for p in left if p.exists()]
    assert segments(old["grpc_port"]) == []
    wait_for("the router routes to the replacement once it is ready",
             lambda: infer.router.table.get(ENDPOINT).replicas == (f"127.0.0.1:{new['grpc_port']}",))
    assert segments(new["grpc_port"])  # the replacement's own
    assert chat_through_the_gateway(infer)["choices"]
