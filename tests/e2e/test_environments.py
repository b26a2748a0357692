"""Every environment reachable under `make up` (deploy/scripts/run_local.py: the supervised
launcher, real Envoy, every service its own process, a real Triton replica of the echo model),
here serving dev and prod (LLMOPS_ENVIRONMENTS): an endpoint deployed with "environment": "prod"
is called through the gateway with the Host prod.llm-ops.local, as the seed's BASE_URLs name
their environment, on /serve (chat, stream, health), OpenAI's /v1 and native gRPC (:authority);
with Host localhost it is not there (dev is); a deploy to stg, which nothing serves, is a 400."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import requests

from llmops.v1 import inference_pb2, inference_pb2_grpc

from ..helpers import ADMIN, approved_echo_model, make_up, make_up_ports

USER = {"X-User-Id": "env-user", "Content-Type": "application/json"}
WAIT_S = 180  # for things that are expected to happen (the platform up, a replica ready), not a speed bound
NAME = "echo-env"


@dataclass
class Platform:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/llm-ops/v1"

    def host(self, environment: str) -> dict[str, str]:
        """The Host of the seed's BASE_URL for environment, on this gateway's port."""
        return {"Host": f"{environment}.llm-ops.local:{self.port}"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("environments")
    ports = make_up_ports()
    env = {"LLMOPS_ENVIRONMENTS": '["dev", "prod"]', "LLMOPS_LOG_LEVEL": "WARNING", "LLMOPS_METRICS_PORT": "0"}
    with make_up(root, ports, env, WAIT_S):
        yield Platform(ports["GATEWAY"])




def deploy(platform: Platform, model_id: str, environment: str) -> requests.Response:
    body = {"modelId": model_id, "environment": environment, "route": f"/llm-ops/v1/serve/{NAME}",
            "minReplicas": 1, "maxReplicas": 1, "autoscalePolicy": {"cpuUtilization": 70}}
    return requests.post(f"{platform.api}/serving/endpoints", json=body, headers=ADMIN, timeout=30)


@pytest.fixture(scope="module")
def prod_endpoint(platform: Platform) -> dict:
    r = deploy(platform, approved_echo_model(platform), "prod")
    assert r.status_code == 200, r.text
    endpoint_id = r.json()["data"]["id"]
    deadline = time.monotonic() + WAIT_S
    while True:
        data = requests.get(f"{platform.api}/serving/endpoints/{endpoint_id}", headers=ADMIN, timeout=10).json()["data"]
        assert data["status"] != "failed", data
        if data["status"] == "healthy":
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.3)
    while requests.get(f"{platform.api}/serve/{NAME}/health", headers=platform.host("prod"),  # the router has it
                       timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the router never learned the prod endpoint"
        time.sleep(0.2)
    return data


def chat(platform: Platform, headers: dict[str, str], **extra) -> requests.Response:
    return requests.post(f"{platform.api}/serve/{NAME}/chat", headers={**USER, **headers}, timeout=60, json={
        "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 3, **extra})


def test_a_deploy_to_prod_is_served_with_the_prod_host(platform, prod_endpoint):
    assert prod_endpoint["environment"] == "prod"
    r = chat(platform, platform.host("prod"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["data"]["model"] == NAME
    assert body["data"]["choices"][0]["message"]["content"].strip()
    health = requests.get(f"{platform.api}/serve/{NAME}/health", headers=platform.host("prod"), timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy", health.text


def test_a_prod_stream_is_served_with_the_prod_host(platform, prod_endpoint):
    r = chat(platform, platform.host("prod"), stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events and all(e["model"] == NAME for e in events)


def test_the_prod_endpoint_is_not_dev(platform, prod_endpoint):
    for headers in ({}, {"Host": "localhost"}, platform.host("dev"), {"X-LLMOps-Environment": "prod"}):
        r = chat(platform, headers)
        assert r.status_code == 404, (headers, r.text)
        assert f"no serving endpoint named '{NAME}' in dev" in r.json()["message"]
        health = requests.get(f"{platform.api}/serve/{NAME}/health", headers=headers, timeout=10)
        assert health.status_code == 404, (headers, health.text)


def test_openai_clients_reach_prod_by_the_host(platform, prod_endpoint):
    def models(headers: dict[str, str]) -> set[str]:
        r = requests.get(f"{platform.url}/v1/models", headers={**USER, **headers}, timeout=10)
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["data"]}

    assert NAME in models(platform.host("prod")) and NAME not in models({})
    body = {"model": NAME, "messages": [{"role": "user", "content": "alpha beta gamma"}], "max_tokens": 2}
    r = requests.post(f"{platform.url}/v1/chat/completions", json=body, headers={**USER, **platform.host("prod")},
                      timeout=60)
    assert r.status_code == 200 and r.json()["model"] == NAME, r.text
    r = requests.post(f"{platform.url}/v1/chat/completions", json=body, headers=USER, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", r.text


def test_native_grpc_reaches_prod_by_the_authority(platform, prod_endpoint):
    request = inference_pb2.ChatRequest(name=NAME, max_tokens=2,
                                        messages=[inference_pb2.ChatMessage(role="user", content="alpha beta")])
    metadata = (("x-user-id", "env-user"),)
    with grpc.insecure_channel(f"127.0.0.1:{platform.port}",
                               options=[("grpc.default_authority", f"prod.llm-ops.local:{platform.port}")]) as channel:
        answer = inference_pb2_grpc.InferenceServiceStub(channel).Chat(request, metadata=metadata, timeout=60)
        assert answer.model == NAME and answer.choices[0].message.content.strip()
    with grpc.insecure_channel(f"127.0.0.1:{platform.port}") as channel:
        with pytest.raises(grpc.RpcError) as missing:
            inference_pb2_grpc.InferenceServiceStub(channel).Chat(request, metadata=metadata, timeout=60)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_deploy_to_an_environment_nothing_serves_is_refused(platform):
    r = deploy(platform, approved_echo_model(platform), "stg")
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "environment stg is not served" in message and "dev, prod" in message, message
    r = requests.get(f"{platform.api}/serving/endpoints?environment=stg", headers=ADMIN, timeout=10)
    assert r.json()["data"]["endpoints"] == []
