"""The local runtime: each replica is a real tritonserver process on this machine.

Replicas run in their own session, so they outlive a restart of the
deployment service; their state (pid, ports, revision) is kept in
<serving_dir>/<endpoint-id>/state.json, and start() adopts the ones still
running and kills any Triton process under serving_dir it does not know.
A reconcile loop health-checks replicas, restarts dead ones and scales
between min and max with the HPA formula on each replica's utilisation: the
share of its slots in use when its model reports them (llmops_replica_requests,
a batching llama.cpp replica, whose CPU is as busy with one request as with
eight), else its measured CPU (one core per replica is 100%)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import structlog
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings

from . import triton
from ..domain import ModelSnapshot
from .base import Health, ReplicaState, RuntimeFailure, RuntimeStatus, ServingSpec

log = structlog.get_logger()

HPA_TOLERANCE = 0.1  # as the Kubernetes HPA: no change within 10% of the target
STOP_TIMEOUT_S = 30.0
REPLICA_PROGRAMS = ("tritonserver", "triton_python_backend_stub")
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores them; a replica must not (as Popen)
# What a batching model exports on its replica's metrics port (deploy/triton/llamacpp/model.py): gauges
# labelled state="running" (requests in slots), "waiting" (queued for a slot) and "slots" (capacity).
OCCUPANCY_FAMILY = "llmops_replica_requests"
OCCUPANCY_LINE = re.compile(rf"(# (HELP|TYPE) )?{OCCUPANCY_FAMILY}[ {{]")
# Triton answers /metrics from memory in milliseconds; one silent replica holds its endpoint's round this long.
SCRAPE_TIMEOUT_S = 1.0


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
    model_processes: int = 0  # Python-backend stubs it ran once ready (one per model instance)
    child: bool = field(default=False, repr=False, compare=False)  # we spawned it: ours to reap
    exit_code: int | None = field(default=None, repr=False, compare=False)
    ps: psutil.Process | None = field(default=None, repr=False, compare=False)

    PERSISTED = ("id", "revision", "pid", "grpc_port", "http_port", "metrics_port", "repository", "log_path",
                 "model_processes")

    def persistable(self) -> dict:
        return {key: getattr(self, key) for key in self.PERSISTED}

    def alive(self) -> bool:
        if self.exit_code is not None or self._reaped():
            return False
        try:
            return self.ps is not None and self.ps.is_running() and self.ps.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _reaped(self) -> bool:
        """Reap our own child once it exited, keeping its exit code."""
        if not self.child:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            self.child = False
            return False
        if pid == 0:
            return False
        self.exit_code, self.child = os.waitstatus_to_exitcode(status), False
        return True

    def running_model_processes(self) -> int:
        """Python-backend stubs under this tritonserver. When a stub dies, Triton keeps saying
        ready and answers every request INTERNAL "Stub process ... is not healthy"; it never
        restarts the stub itself."""
        try:
            children = self.ps.children() if self.ps else []
        except psutil.Error:
            return 0
        count = 0
        for child in children:
            with contextlib.suppress(psutil.Error, IndexError):
                count += os.path.basename(child.cmdline()[0]) == "triton_python_backend_stub"
        return count

    def model_died(self) -> bool:
        return self.model_processes > 0 and self.running_model_processes() < self.model_processes

    def state(self, host: str) -> ReplicaState:
        """As the router sees it: at `host` (LLMOPS_SERVING_ADVERTISE_HOST), the replica's gRPC port."""
        return ReplicaState(id=self.id, grpc_address=f"{host}:{self.grpc_port}",
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


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: each socket stays bound until all are chosen, so none repeats."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


async def _http_ready(port: int, timeout: float = 2.0) -> bool:
    """GET /v2/health/ready on a replica's HTTP port."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET /v2/health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        return line.split(b" ")[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        writer.close()


@dataclass(frozen=True)
class SlotOccupancy:
    """A batching replica's requests: in its slots, queued for one, and how many slots it has."""

    running: float
    waiting: float
    slots: float

    def percent(self) -> float:
        """Busy slots in percent; the queue counts too, so a full replica with a queue reads over 100
        and the HPA formula asks for as many replicas as would hold everything."""
        return 100 * (self.running + self.waiting) / self.slots


def slot_occupancy(metrics_text: str) -> SlotOccupancy | None:
    """OCCUPANCY_FAMILY from a replica's /metrics (Prometheus text); None when the replica does not report
    it (embedding, echo, a model from before slots). Series of one state are added up (models of one
    replica). ValueError: not Prometheus text, or a family without slots."""
    # The family's lines alone go to the parser (0.15 ms a replica, not 2 ms for all of Triton's 53),
    # and a line of theirs the parser refuses must not hide the reading.
    lines = [line for line in metrics_text.splitlines() if OCCUPANCY_LINE.match(line)]
    totals: dict[str, float] | None = None
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        if family.name != OCCUPANCY_FAMILY:
            continue
        totals = totals or {"running": 0.0, "waiting": 0.0, "slots": 0.0}
        for sample in family.samples:
            if (state := sample.labels.get("state")) in totals:
                totals[state] += sample.value
    if totals is None:
        return None
    if totals["slots"] <= 0:
        raise ValueError(f"{OCCUPANCY_FAMILY} reports {totals['slots']:g} slots")
    return SlotOccupancy(**totals)


async def _metrics_text(host: str, port: int) -> str:
    """GET /metrics on a replica's metrics port, within SCRAPE_TIMEOUT_S. Raises OSError, TimeoutError, or
    ValueError for an answer other than 200."""
    async with asyncio.timeout(SCRAPE_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            response = await reader.read()  # HTTP/1.0: the server closes the connection after the body
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"]:
        raise ValueError(f"/metrics answered {status[:80]!r}")
    return body.decode(errors="replace")


def _scrape_host(metrics_address: str) -> str:
    """Where this process reaches the metrics of a replica listening on `metrics_address`: that address, or
    loopback when it is all of them (0.0.0.0, ::)."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(metrics_address)
        if address.is_unspecified:
            return "::1" if address.version == 6 else "127.0.0.1"
    return metrics_address


def _spec_from_json(data: dict) -> ServingSpec:
    return ServingSpec(**{**data, "model": ModelSnapshot(**data["model"])})


def triton_processes_under(root: Path) -> list[psutil.Process]:
    """Every process of a replica under root: tritonserver and its Python-backend stubs
    (a stub names its model's directory; it outlives a tritonserver killed alone)."""
    marker = str(root)
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            program = os.path.basename(cmdline[0]) if cmdline else ""
            if program in REPLICA_PROGRAMS and any(marker in part for part in cmdline):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_all(root: Path) -> int:
    """Stop every replica process under root (`make up` calls this when it exits)."""
    procs = triton_processes_under(root)
    stop_procs(procs)
    return len(procs)


def stop_procs(procs: list[psutil.Process], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each process's group, SIGKILL the groups after timeout (a stub ignores SIGTERM), then
    remove their shared-memory regions (Triton removes them on a clean exit only)."""
    groups = {_group_of(proc) for proc in procs} - {None}
    prefixes = {prefix for proc in procs if (prefix := triton.shm_prefix_of(_cmdline(proc)))}
    for group in groups:
        _signal_group(group, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in groups:
        _signal_group(group, signal.SIGKILL)
    for proc in procs:  # not in a group of their own
        if _running(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    for prefix in prefixes:
        triton.remove_shared_memory(prefix)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _running(proc: psutil.Process) -> bool:
    """Alive, zombies excepted: a replica orphaned by a killed deployment service is reparented to
    an init that may never reap it (psutil.wait_procs would wait out its whole timeout)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_of(proc: psutil.Process) -> int | None:
    """The process group to signal: the replica's own session (tritonserver leads it)."""
    try:
        group = os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None
    return group if group not in (os.getpgid(0), 0, 1) else None


def _signal_group(group: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(group, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class LocalRuntime:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._root = Path(settings.serving_dir).resolve()
        # What the replicas demand on every API but health, and the router sends (Settings.replica_key).
        # Without a service token no router is given a route: a key nobody holds.
        self._replica_key = settings.replica_key() or secrets.token_hex(32)
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
        orphans = [p for p in await asyncio.to_thread(triton_processes_under, self._root)
                   if p.pid not in known and _group_of(p) not in known]
        if orphans:  # nobody routes to them (a start-up cut short, a lost state file): no drain
            log.warning("stopping orphan replica processes", pids=[p.pid for p in orphans])
            await asyncio.to_thread(stop_procs, orphans, 0)
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
            # The surge bound: while a revision rolls out, the endpoint runs its serving replicas plus
            # the new revision's, never more (maxSurge 100%); replicas still draining from an earlier
            # rollout or scale-down have no traffic left, and stop now.
            await self._stop_draining(state)
            new = [self._spawn(spec.endpoint_id, spec.revision, repository) for _ in range(count)]
            try:
                await self._wait_ready(new)
            except BaseException as exc:
                await asyncio.gather(*(self._stop(r) for r in new))
                state.failure = str(exc) if isinstance(exc, RuntimeFailure) else state.failure
                raise
            old = state.replicas
            state.spec, state.triton_model, state.repository = spec, model_name, str(repository)
            state.desired, state.replicas, state.failure, state.ever_ready = count, new + old, "", True
            self._retire_later(spec.endpoint_id, state, old)  # the switch is done: old replicas drain
            self._persist(spec.endpoint_id)
            self._changed(spec.endpoint_id)  # traffic moves to the new replicas

    def _retire_later(self, endpoint_id: str, state: EndpointState, replicas: list[Replica]) -> None:
        """Drain replicas (the router already stopped sending them work) and stop them, in the
        background: the endpoint's lock is not held meanwhile."""
        for replica in replicas:
            replica.draining = True
        task = asyncio.create_task(self._retire(endpoint_id, state, replicas))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, endpoint_id: str, state: EndpointState, old: list[Replica]) -> None:
        await asyncio.sleep(self._settings.drain_s)
        await asyncio.gather(*(self._stop(r) for r in old))
        state.replicas = [r for r in state.replicas if r not in old]
        if self._states.get(endpoint_id) is state:
            self._persist(endpoint_id)
            await asyncio.to_thread(self._prune_repositories, endpoint_id, state)

    async def _stop_draining(self, state: EndpointState) -> None:
        draining = [r for r in state.replicas if r.draining]
        await asyncio.gather(*(self._stop(r) for r in draining))
        state.replicas = [r for r in state.replicas if r not in draining]

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
                             replicas=tuple(r.state(self._settings.serving_advertise_host)
                                           for r in state.replicas if r.ready and not r.draining))

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        # Wait, so that no reconcile round can start a replica after close() returned.
        await asyncio.gather(*tasks, return_exceptions=True)
        # Replicas keep running: the next start() adopts them.

    # replicas ------------------------------------------------------------------------------------------------

    def _write_repository(self, repository: Path, model: ModelSnapshot, replicas: int) -> str:
        if repository.exists():
            shutil.rmtree(repository)
        repository.mkdir(parents=True)
        return triton.write_model_repository(repository / "models", model, replicas=replicas,
                                             file_roots=self._settings.local_artifact_roots)

    def _spawn(self, endpoint_id: str, revision: int, repository: Path) -> Replica:
        assert self._home is not None
        replica_id = f"r{revision}-{uuid.uuid4().hex[:6]}"
        ports = dict(zip(("grpc_port", "http_port", "metrics_port"), _free_ports(3), strict=True))
        # gRPC where the router reaches it; HTTP (the readiness checks here) on loopback.
        argv, env = triton.triton_command(
            self._home, repository / "models", replica_key=self._replica_key,
            address=triton.bind_address(self._settings.serving_advertise_host),
            metrics_address=self._settings.metrics_address, **ports)
        log_path = self._root / endpoint_id / f"{replica_id}.log"
        # Spawned, not a subprocess.Popen: a replica outlives the runtime that started it (the next
        # one adopts it), and the Replica reaps its own child (os.waitpid).
        with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
            pid = os.posix_spawn(argv[0], argv, env, setsid=True, setsigdef=RESTORED_SIGNALS, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull.fileno(), 0), (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 2)])
        replica = Replica(id=replica_id, revision=revision, pid=pid, repository=str(repository),
                          log_path=str(log_path), child=True, ps=psutil.Process(pid), **ports)
        log.info("replica started", endpoint=endpoint_id, replica=replica_id, pid=pid, grpc_port=ports["grpc_port"],
                 notice=True)
        return replica

    async def _wait_ready(self, replicas: list[Replica]) -> None:
        deadline = time.monotonic() + self._settings.triton_ready_timeout_s
        pending = list(replicas)
        while pending:
            for replica in list(pending):
                # As soon as the model's load made them: before any request can be routed to it.
                await asyncio.to_thread(triton.protect_shared_memory, triton.shm_prefix(replica.grpc_port))
                if not replica.alive():
                    raise RuntimeFailure(f"replica exited during start-up{_exit_status(replica)}: "
                                         f"{_startup_failure(replica.log_path)}")
                if await _http_ready(replica.http_port):
                    replica.model_processes = await asyncio.to_thread(replica.running_model_processes)
                    replica.ready = True
                    pending.remove(replica)
            if pending and time.monotonic() > deadline:
                raise RuntimeFailure(f"replica not ready after {self._settings.triton_ready_timeout_s:.0f}s: "
                                     f"{_tail(pending[0].log_path)}")
            if pending:
                await asyncio.sleep(0.25)

    async def _stop(self, replica: Replica, *, grace_s: float | None = None) -> None:
        """SIGTERM the replica's process group (tritonserver drains in-flight requests), then
        SIGKILL whatever of the group is left after the grace period: stubs busy in a long
        request ignore SIGTERM and would outlive their tritonserver."""
        replica.ready = False
        if _signal_group(replica.pid, signal.SIGTERM):
            deadline = time.monotonic() + (self._settings.replica_stop_timeout_s if grace_s is None else grace_s)
            while replica.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            _signal_group(replica.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while replica.alive() and time.monotonic() < deadline:  # reaps our child; init reaps an adopted one
            await asyncio.sleep(0.05)
        if not replica.alive():  # Triton removes its regions on a clean exit only
            removed = await asyncio.to_thread(triton.remove_shared_memory, triton.shm_prefix(replica.grpc_port))
            if removed:
                log.info("removed a stopped replica's shared memory", replica=replica.id, regions=len(removed))

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
                cmdline = replica.ps.cmdline()
                same = any(replica.repository in part for part in cmdline)
            except psutil.Error:
                same, cmdline = False, []
            if same and not set(triton.restricted_api_flags(self._replica_key)) <= set(cmdline):
                # Started by a version without the key, or under another service token: the router could
                # not call it. Not adopted: start() stops it, and the reconcile loop starts a replacement.
                log.warning("replica not adopted: it does not demand the current replica key", endpoint=endpoint_id,
                            replica=replica.id, pid=replica.pid)
                same = False
            if same and replica.alive():
                replica.ready = await _http_ready(replica.http_port)
                state.replicas.append(replica)
                adopted.add(replica.pid)
        log.info("adopted replicas", endpoint=endpoint_id, adopted=len(adopted), recorded=len(data["replicas"]),
                 notice=True)
        self._states[endpoint_id] = state
        return adopted

    def _prune_repositories(self, endpoint_id: str, state: EndpointState) -> None:
        """Remove the repositories of revisions older than any replica still runs: a newer one
        may be rolling out (its replicas are not in the state yet), and revisions only grow."""
        assert state.spec is not None
        oldest = min([r.revision for r in state.replicas] + [state.spec.revision])
        for path in (self._root / endpoint_id).glob("rev-*"):
            number = path.name.removeprefix("rev-")
            if number.isdigit() and int(number) < oldest:
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
                await self._stop(replica)  # what is left of its process group (stubs)
                state.replicas.remove(replica)
                changed = True
                continue
            if await asyncio.to_thread(replica.model_died):
                log.warning("replica's model process died; replacing the replica", endpoint=endpoint_id,
                            replica=replica.id, pid=replica.pid)
                state.replicas.remove(replica)
                self._changed(endpoint_id)  # out of the route table first; nothing on it can succeed
                await self._stop(replica, grace_s=0)
                changed = True
                continue
            # Before it counts as ready (a replacement starting here, or one adopted from an older version).
            await asyncio.to_thread(triton.protect_shared_memory, triton.shm_prefix(replica.grpc_port))
            ready = await _http_ready(replica.http_port)
            if ready and not replica.model_processes:  # became ready here (a restart) or adopted
                replica.model_processes = await asyncio.to_thread(replica.running_model_processes)
            replica.failed_checks = 0 if ready else replica.failed_checks + 1
            # A replica that was ready must fail three checks in a row to be taken out.
            now_ready = ready or (replica.ready and replica.failed_checks < 3)
            changed |= now_ready != replica.ready
            replica.ready = now_ready
        desired = await self._autoscale(state)
        changed |= desired != state.desired
        state.desired = desired
        running = [r for r in state.replicas if not r.draining]
        for _ in range(desired - len(running)):
            state.replicas.append(self._spawn(endpoint_id, state.spec.revision, Path(state.repository)))
            changed = True
        if len(running) > desired:
            # Scale down, not-ready replicas first; the router stops sending before Triton drains.
            self._retire_later(endpoint_id, state, sorted(running, key=lambda r: r.ready)[: len(running) - desired])
            changed = True
        if changed:
            self._persist(endpoint_id)
            self._changed(endpoint_id)

    async def _autoscale(self, state: EndpointState) -> int:
        """desired = ceil(ready * utilisation / target), within [min, max], as the Kubernetes HPA.

        One knob, autoscalePolicy.cpuUtilization (spec.cpu_target): the target share of busy slots for a
        replica that reports them (_utilisation), of one core for any other. The count holds while any
        ready replica gives no reading: never scale on missing data."""
        spec = state.spec
        assert spec is not None
        ready = [r for r in state.replicas if r.ready and not r.draining]
        current = max(state.desired, spec.min_replicas)
        readings = await asyncio.gather(*(self._utilisation(r) for r in ready))
        if not ready or None in readings:
            return min(max(current, spec.min_replicas), spec.max_replicas)
        utilisation = sum(readings) / len(readings)
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

    async def _utilisation(self, replica: Replica) -> float | None:
        """How busy a replica is, in percent: of its slots when it reports them, else of one core. None when
        its metrics could not be read (logged)."""
        try:
            text = await _metrics_text(_scrape_host(self._settings.metrics_address), replica.metrics_port)
            occupancy = slot_occupancy(text)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("no metrics from a replica; its endpoint keeps its replica count", replica=replica.id,
                        metrics_port=replica.metrics_port, error=str(exc) or type(exc).__name__)
            return None
        return occupancy.percent() if occupancy is not None else _cpu_percent(replica)


def _cpu_percent(replica: Replica) -> float:
    # psutil measures since the previous call: the reconcile period.
    try:
        return replica.ps.cpu_percent(None) if replica.ps else 0.0
    except psutil.Error:
        return 0.0


def _exit_status(replica: Replica) -> str:
    """' (killed by SIGSEGV)' or ' (exit code 1)', when we know it (our child); else ''."""
    replica.alive()  # reaps it, if it is our child and exited
    code = replica.exit_code
    if code is None:
        return ""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(-code).name})"
    return f" (exit code {code})"


def _startup_failure(log_path: str) -> str:
    """Why a replica did not start: the model's own reason when Triton logged one (a failed
    load or warm-up), else the end of its log."""
    for line in reversed(_log_lines(log_path, max_bytes=65536)):
        if (found := re.search(r"failed to load '[^']+' version \d+: (.+?)\"?$", line)) is not None:
            return found.group(1).rstrip("; ")
    return _tail(log_path)


def _tail(path: str, lines: int = 5) -> str:
    return " | ".join(_log_lines(path)[-lines:]) or "(no log)"


def _log_lines(path: str, max_bytes: int = 8192) -> list[str]:
    """The last lines of a replica log, reading only its end (logs grow without bound)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - max_bytes))
            return log_file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return []
