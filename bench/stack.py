"""What the scenarios run against, started by the harness itself: the platform as `make up`
runs it (deploy/scripts/run_local.py, embedded defaults, in a directory of its own and on
free ports), and its endpoints, deployed through the public API."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT / "deploy" / "scripts"))

from bundled_models import BUNDLED, CHATML  # noqa: E402, F401 - CHATML: the chat template of the models here
from deployment.runtimes.local import REPLICA_PROGRAMS  # noqa: E402
from llmops.v1 import deployment_pb2, deployment_pb2_grpc  # noqa: E402
from shared.identity import SERVICE_TOKEN_KEY  # noqa: E402
from shared.settings import Settings  # noqa: E402
# What the harness starts gets SIGTERM from the kernel if the harness dies (the platform then stops its replicas).
from supervisor import die_with_parent  # noqa: E402

ADMIN = {"X-User-Id": "bench-admin", "X-User-Roles": "admin"}
REGISTRAR = {"X-User-Id": "bench-registrar", "X-User-Roles": "researcher"}
USER = {"X-User-Id": "bench-user", "X-User-Roles": "researcher"}
SERVICES = ("registry", "deployment", "experiment", "router", "reflection")


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition, timeout: float, what: str, poll: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f}s")
        time.sleep(poll)


@dataclass
class Endpoint:
    id: str
    name: str
    replicas: list[str]  # Triton gRPC host:port
    triton_model: str


class Platform:
    """`make up`'s processes under the supervisor, in `work`, until stop()."""

    def __init__(self, work: Path) -> None:
        self.work = work
        ports = free_ports(len(SERVICES) + 2)
        self.ports = dict(zip(SERVICES, ports))
        self.gateway_port, admin_port = ports[-2:]
        self.token = secrets.token_urlsafe(24)
        self.replica_key = Settings(service_token=self.token).replica_key()  # what the router sends replicas
        self.env = {
            **os.environ,
            "LLMOPS_DATABASE_URL": f"sqlite:///{work / 'llmops.db'}",
            "LLMOPS_SERVING_DIR": str(work / "serving"),
            "LLMOPS_OUTCOME_JOURNAL_DIR": str(work / "router"),
            "LLMOPS_GATEWAY_PORT": str(self.gateway_port),
            "LLMOPS_GATEWAY_ADMIN_PORT": str(admin_port),
            "LLMOPS_SUPERVISOR_METRICS_PORT": "0",
            "LLMOPS_SERVICE_TOKEN": self.token,
            "LLMOPS_RATE_LIMIT_PER_MINUTE": "0",
            **{f"LLMOPS_{name.upper()}_PORT": str(port) for name, port in self.ports.items()},
        }
        self.base = f"http://127.0.0.1:{self.gateway_port}"
        self.api = f"{self.base}/llm-ops/v1"
        self.process: subprocess.Popen | None = None
        self.http = requests.Session()

    def start(self, timeout: float = 120) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        log = (self.work / "platform.log").open("wb")
        self.process = subprocess.Popen(
            die_with_parent([sys.executable, str(ROOT / "deploy" / "scripts" / "run_local.py")]),
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._seeded() or self._died(), timeout, "the platform's bundled models")
        if self.process.poll() is not None:
            raise RuntimeError(f"the platform exited ({self.process.returncode}); see {self.work / 'platform.log'}")

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _seeded(self) -> bool:
        try:
            r = self.http.get(f"{self.api}/catalog/models?ownerTeam=platform", headers=ADMIN, timeout=2)
        except requests.RequestException:
            return False
        approved = sum(m["status"] == "approved" for m in r.json()["data"]["models"]) if r.status_code == 200 else 0
        return approved >= len(BUNDLED)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user and system) each of the platform's processes used so far: the
        services by name, "envoy", and "triton" for every replica together. A measure of cost
        that a busier or quieter machine moves far less than it moves wall time."""
        used: dict[str, float] = {}
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline, times = proc.cmdline(), proc.cpu_times()
            except psutil.Error:
                continue
            program = Path(cmdline[0]).name if cmdline else ""
            if program == "envoy":
                name = "envoy"
            elif program in REPLICA_PROGRAMS:
                name = "triton"
            elif len(cmdline) >= 3 and cmdline[1] == "-m":
                name = cmdline[2]
            else:
                continue
            used[name] = used.get(name, 0.0) + times.user + times.system
        return used

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    # the public API ------------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: dict | None = None, headers: dict = ADMIN) -> dict:
        r = self.http.request(method, f"{self.api}{path}", json=body, headers=headers, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json()["data"]

    def bundled(self, name: str) -> dict:
        models = self.call("GET", "/catalog/models?ownerTeam=platform")["models"]
        return next(m for m in models if m["name"] == name)

    def approved_model(self, **spec) -> dict:
        model = self.call("POST", "/catalog/models", {"ownerTeam": "bench", "status": "pending_review", **spec},
                          headers=REGISTRAR)
        return self.call("PATCH", f"/catalog/models/{model['id']}/status", {"status": "approved"})

    def deploy(self, model_id: str, name: str, *, replicas: int = 1, timeout: float = 300) -> Endpoint:
        endpoint = self.call("POST", "/serving/endpoints", {
            "modelId": model_id, "environment": "dev", "route": f"/llm-ops/v1/serve/{name}",
            "minReplicas": replicas, "maxReplicas": replicas})
        return self.wait_healthy(endpoint["id"], timeout)

    def wait_healthy(self, endpoint_id: str, timeout: float = 300, revision: int | None = None) -> Endpoint:
        def healthy() -> bool:
            e = self.call("GET", f"/serving/endpoints/{endpoint_id}")
            if e["status"] == "failed":
                raise RuntimeError(f"endpoint {e['name']} failed: {e.get('statusReason')}")
            return e["status"] == "healthy" and (revision is None or e["revision"] == revision)
        wait_for(healthy, timeout, f"endpoint {endpoint_id} healthy", poll=0.05)
        return self.routed(endpoint_id)

    def routed(self, endpoint_id: str) -> Endpoint:
        """The endpoint as the router sees it (WatchEndpoints' snapshot): its replicas' addresses."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports['deployment']}") as channel:
            stub = deployment_pb2_grpc.DeploymentServiceStub(channel)
            watch = stub.WatchEndpoints(deployment_pb2.WatchEndpointsRequest(environment="dev"),
                                        metadata=((SERVICE_TOKEN_KEY, self.token), ("x-user-id", "bench-admin"),
                                                  ("x-user-roles", "admin")), timeout=30)
            snapshot = next(watch)
            watch.cancel()
        routed = next(e for e in snapshot.endpoints if e.endpoint.id == endpoint_id)
        return Endpoint(endpoint_id, routed.endpoint.name, [r.grpc_address for r in routed.replicas if r.ready],
                        routed.triton_model)
