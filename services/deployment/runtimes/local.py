"""The local runtime: each replica is a real tritonserver process on this machine.

Replicas run in their own session, so they outlive a restart of the
deployment service; their state (pid, ports, revision) is kept in
<serving_dir>/<endpoint-id>/state.json, and start() adopts the ones still
running and kills any Triton process under serving_dir it does not know.
A reconcile loop health-checks replicas, restarts dead ones and scales
between min and max with the HPA formula on measured CPU utilisation
(one core per replica is 100%)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import structlog

from shared.settings import Settings

from . import triton
from .base import Health, ModelInfo, ReplicaState, RuntimeFailure, RuntimeStatus, ServingSpec

log = structlog.get_logger()

HPA_TOLERANCE = 0.1  # as the Kubernetes HPA: no change within 10% of the target
STOP_TIMEOUT_S = 30.0


@dataclass
class Replica:
    id: str
    revision: int
    pid: int
    grpc_port: int
    http_port: int
    metrics_port: int
    repository: str
    log_path: str
    ready: bool = False
    draining: bool = False
    failed_checks: int = 0
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    ps: psutil.Process | None = field(default=None, repr=False, compare=False)

    PERSISTED = ("id", "revision", "pid", "grpc_port", "http_port", "metrics_port", "repository", "log_path")

    def persistable(self) -> dict:
        return {key: getattr(self, key) for key in self.PERSISTED}

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        try:
            return self.ps is not None and self.ps.is_running() and self.ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def state(self) -> ReplicaState:
        return ReplicaState(id=self.id, grpc_address=f"127.0.0.1:{self.grpc_port}",
                            ready=self.ready and not self.draining, revision=self.revision)


@dataclass
class EndpointState:
    spec: ServingSpec | None = None
    triton_model: str = ""
    repository: str = ""
    desired: int = 0
    replicas: list[Replica] = field(default_factory=list)
    failure: str = ""
    ever_ready: bool = False
    scale_down_since: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _http_ready(port: int, timeout: float = 2.0) -> bool:
    """GET /v2/health/ready on a replica's HTTP port."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET /v2/health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.split(b" ")[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        writer.close()


def _spec_from_json(data: dict) -> ServingSpec:
    return ServingSpec(**{**data, "model": ModelInfo(**data["model"])})


def triton_processes_under(root: Path) -> list[psutil.Process]:
    """Every tritonserver whose model repository lies under root."""
    marker = str(root)
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if any("tritonserver" in part for part in cmdline[:1]) and any(marker in part for part in cmdline):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_all(root: Path) -> int:
    """Stop every replica under root (`make up` calls this when it exits)."""
    procs = triton_processes_under(root)
    stop_procs(procs)
    return len(procs)


def stop_procs(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
    for proc in alive:
        proc.kill()


class LocalRuntime:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._root = Path(settings.serving_dir).resolve()
        self._states: dict[str, EndpointState] = {}
        self._home: triton.TritonHome | None = None
        self._loop_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.on_change: Callable[[str], None] | None = None

    # protocol ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        self._home = await asyncio.to_thread(triton.prepare_triton_home, self._settings.triton_home)
        known: set[int] = set()
        for state_file in self._root.glob("*/state.json"):
            known |= await self._adopt(state_file)
        for proc in triton_processes_under(self._root):
            if proc.pid not in known:
                log.warning("stopping orphan triton replica", pid=proc.pid)
                await asyncio.to_thread(stop_procs, [proc])
        self._loop_task = asyncio.create_task(self._reconcile_loop(), name="local-runtime-reconcile")

    async def apply(self, spec: ServingSpec) -> None:
        state = self._states.setdefault(spec.endpoint_id, EndpointState())
        async with state.lock:
            repository = self._root / spec.endpoint_id / f"rev-{spec.revision}"
            count = min(max(state.desired or spec.min_replicas, spec.min_replicas), spec.max_replicas)
            try:
                model_name = await asyncio.to_thread(self._write_repository, repository, spec.model, count)
            except (ValueError, OSError) as exc:
                state.failure = str(exc)
                raise RuntimeFailure(str(exc)) from exc
            new = [self._spawn(spec.endpoint_id, spec.revision, repository) for _ in range(count)]
            try:
                await self._wait_ready(new)
            except BaseException as exc:
                await asyncio.gather(*(self._stop(r) for r in new))
                state.failure = str(exc) if isinstance(exc, RuntimeFailure) else state.failure
                raise
            old = state.replicas
            for replica in old:
                replica.draining = True
            state.spec, state.triton_model, state.repository = spec, model_name, str(repository)
            state.desired, state.replicas, state.failure, state.ever_ready = count, new + old, "", True
            self._persist(spec.endpoint_id)
            self._changed(spec.endpoint_id)  # traffic moves to the new replicas
            if old:
                # The switch is done: old replicas drain and stop in the background.
                task = asyncio.create_task(self._retire(spec.endpoint_id, state, old, keep=repository.name))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _retire(self, endpoint_id: str, state: EndpointState, old: list[Replica], *, keep: str) -> None:
        await asyncio.sleep(self._settings.drain_s)
        await asyncio.gather(*(self._stop(r) for r in old))
        state.replicas = [r for r in state.replicas if r not in old]
        if self._states.get(endpoint_id) is state:
            self._persist(endpoint_id)
            await asyncio.to_thread(self._prune_repositories, endpoint_id, keep=keep)

    async def remove(self, endpoint_id: str) -> None:
        state = self._states.pop(endpoint_id, None)
        if state is not None:
            await asyncio.gather(*(self._stop(r) for r in state.replicas))
        # Anything else still running from this endpoint's directory (e.g. a spawn cut short).
        await asyncio.to_thread(stop_all, self._root / endpoint_id)
        await asyncio.to_thread(shutil.rmtree, self._root / endpoint_id, True)

    async def status(self, endpoint_id: str) -> RuntimeStatus:
        state = self._states.get(endpoint_id)
        if state is None or state.spec is None:
            failure = state.failure if state else ""
            return RuntimeStatus(health=Health.FAILED if failure else Health.DEPLOYING, reason=failure,
                                 desired_replicas=state.desired if state else 0, ready_replicas=0)
        active = [r for r in state.replicas if not r.draining]
        ready = sum(r.ready for r in active)
        if ready >= state.desired:
            health, reason = Health.HEALTHY, ""
        elif state.ever_ready:
            health, reason = Health.DEGRADED, f"{ready} of {state.desired} replicas ready"
        else:
            health, reason = Health.DEPLOYING, ""
        return RuntimeStatus(health=health, reason=reason, desired_replicas=state.desired, ready_replicas=ready,
                             triton_model=state.triton_model,
                             replicas=tuple(r.state() for r in state.replicas if r.ready and not r.draining))

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        # Wait, so that no reconcile round can start a replica after close() returned.
        await asyncio.gather(*tasks, return_exceptions=True)
        # Replicas keep running: the next start() adopts them.

    # replicas ------------------------------------------------------------------------------------------------

    def _write_repository(self, repository: Path, model: ModelInfo, replicas: int) -> str:
        if repository.exists():
            shutil.rmtree(repository)
        repository.mkdir(parents=True)
        return triton.write_model_repository(repository / "models", model, replicas=replicas)

    def _spawn(self, endpoint_id: str, revision: int, repository: Path) -> Replica:
        assert self._home is not None
        replica_id = f"r{revision}-{uuid.uuid4().hex[:6]}"
        ports = dict(grpc_port=_free_port(), http_port=_free_port(), metrics_port=_free_port())
        argv, env = triton.triton_command(self._home, repository / "models", **ports)
        log_path = self._root / endpoint_id / f"{replica_id}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        replica = Replica(id=replica_id, revision=revision, pid=popen.pid, repository=str(repository),
                          log_path=str(log_path), popen=popen, ps=psutil.Process(popen.pid), **ports)
        log.info("replica started", endpoint=endpoint_id, replica=replica_id, pid=popen.pid, grpc_port=ports["grpc_port"])
        return replica

    async def _wait_ready(self, replicas: list[Replica]) -> None:
        deadline = time.monotonic() + self._settings.triton_ready_timeout_s
        pending = list(replicas)
        while pending:
            for replica in list(pending):
                if not replica.alive():
                    raise RuntimeFailure(f"replica exited during start-up: {_tail(replica.log_path)}")
                if await _http_ready(replica.http_port):
                    replica.ready = True
                    pending.remove(replica)
            if pending and time.monotonic() > deadline:
                raise RuntimeFailure(f"replica not ready after {self._settings.triton_ready_timeout_s:.0f}s: "
                                     f"{_tail(pending[0].log_path)}")
            if pending:
                await asyncio.sleep(0.25)

    async def _stop(self, replica: Replica) -> None:
        replica.ready = False
        try:
            os.killpg(replica.pid, signal.SIGTERM) if replica.popen else replica.ps.terminate()  # type: ignore[union-attr]
        except (ProcessLookupError, psutil.Error, AttributeError):
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while replica.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if replica.alive():
            try:
                replica.ps.kill()  # type: ignore[union-attr]
            except psutil.Error:
                pass
        if replica.popen is not None:
            replica.popen.wait(5)

    # state ---------------------------------------------------------------------------------------------------

    def _persist(self, endpoint_id: str) -> None:
        state = self._states[endpoint_id]
        path = self._root / endpoint_id / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "spec": asdict(state.spec) if state.spec else None, "triton_model": state.triton_model,
            "repository": state.repository, "desired": state.desired,
            "replicas": [r.persistable() for r in state.replicas if not r.draining],
        }))
        tmp.replace(path)  # atomic: a crash never leaves half a state file

    async def _adopt(self, state_file: Path) -> set[int]:
        """Take back the replicas of a state file that are still the processes we started."""
        endpoint_id = state_file.parent.name
        try:
            data = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return set()
        if not data.get("spec"):
            return set()
        state = EndpointState(spec=_spec_from_json(data["spec"]), triton_model=data["triton_model"],
                              repository=data["repository"], desired=data["desired"], ever_ready=True)
        adopted: set[int] = set()
        for raw in data["replicas"]:
            replica = Replica(**raw)
            try:
                replica.ps = psutil.Process(replica.pid)
                same = any(replica.repository in part for part in replica.ps.cmdline())
            except psutil.Error:
                same = False
            if same and replica.alive():
                replica.ready = await _http_ready(replica.http_port)
                state.replicas.append(replica)
                adopted.add(replica.pid)
        log.info("adopted replicas", endpoint=endpoint_id, adopted=len(adopted), recorded=len(data["replicas"]))
        self._states[endpoint_id] = state
        return adopted

    def _prune_repositories(self, endpoint_id: str, *, keep: str) -> None:
        for path in (self._root / endpoint_id).glob("rev-*"):
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def _changed(self, endpoint_id: str) -> None:
        if self.on_change is not None:
            self.on_change(endpoint_id)

    # reconcile -----------------------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconcile_interval_s)
            for endpoint_id, state in list(self._states.items()):
                if state.spec is None or state.lock.locked():
                    continue  # nothing applied yet, or an apply is in progress
                try:
                    async with state.lock:
                        await self._reconcile(endpoint_id, state)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one endpoint's trouble must not stop the others
                    log.exception("reconcile failed", endpoint=endpoint_id)

    async def _reconcile(self, endpoint_id: str, state: EndpointState) -> None:
        assert state.spec is not None
        changed = False
        for replica in list(state.replicas):
            if replica.draining:
                continue  # being retired by _retire
            if not replica.alive():
                log.warning("replica died; replacing it", endpoint=endpoint_id, replica=replica.id, pid=replica.pid)
                state.replicas.remove(replica)
                if replica.popen is not None:
                    replica.popen.poll()
                changed = True
                continue
            ready = await _http_ready(replica.http_port)
            replica.failed_checks = 0 if ready else replica.failed_checks + 1
            # A replica that was ready must fail three checks in a row to be taken out.
            now_ready = ready or (replica.ready and replica.failed_checks < 3)
            changed |= now_ready != replica.ready
            replica.ready = now_ready
        desired = self._autoscale(state)
        changed |= desired != state.desired
        state.desired = desired
        running = [r for r in state.replicas if not r.draining]
        for _ in range(desired - len(running)):
            state.replicas.append(self._spawn(endpoint_id, state.spec.revision, Path(state.repository)))
            changed = True
        if len(running) > desired:
            # Scale down, not-ready replicas first; the router stops sending before Triton drains.
            surplus = sorted(running, key=lambda r: r.ready)[: len(running) - desired]
            for replica in surplus:
                replica.draining = True
            self._changed(endpoint_id)
            await asyncio.sleep(self._settings.drain_s)
            await asyncio.gather(*(self._stop(r) for r in surplus))
            state.replicas = [r for r in state.replicas if r not in surplus]
            changed = True
        if changed:
            self._persist(endpoint_id)
            self._changed(endpoint_id)

    def _autoscale(self, state: EndpointState) -> int:
        """desired = ceil(current * utilisation / target), within [min, max], as the Kubernetes HPA."""
        spec = state.spec
        assert spec is not None
        ready = [r for r in state.replicas if r.ready and not r.draining]
        current = max(state.desired, spec.min_replicas)
        if not ready:
            return min(max(current, spec.min_replicas), spec.max_replicas)
        utilisation = sum(_cpu_percent(r) for r in ready) / len(ready)
        ratio = utilisation / spec.cpu_target
        proposal = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(len(ready) * ratio)
        proposal = min(max(proposal, spec.min_replicas), spec.max_replicas)
        if proposal < current:
            # Scale down only once the lower count has held for the stabilisation window.
            now = time.monotonic()
            state.scale_down_since = state.scale_down_since or now
            if now - state.scale_down_since < self._settings.scale_down_window_s:
                return current
        state.scale_down_since = None
        return proposal


def _cpu_percent(replica: Replica) -> float:
    # psutil measures since the previous call: the reconcile period.
    try:
        return replica.ps.cpu_percent(None) if replica.ps else 0.0
    except psutil.Error:
        return 0.0


def _tail(path: str, lines: int = 5) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
