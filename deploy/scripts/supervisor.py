"""A small init system for `make up`: start each process, restart the ones
that exit with exponential backoff (logged and counted), stop all on request.

Children run in their own process group, so Ctrl-C reaches only the
supervisor, which then stops them in order; they also get SIGTERM from the
kernel if the supervisor itself dies, so nothing is orphaned. That is set by
util-linux's setpriv, not by a preexec_fn: Python code between fork and exec
runs the at-fork handlers of whatever the parent has loaded (gRPC's abort the
child when another thread is inside gRPC), while without one CPython spawns
with vfork, which runs none. The flag only covers a parent that dies after it
is set, so a shell checks, once it is, that the parent is still the one that
spawned it, and exits if not (a supervisor killed right after a spawn)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

RESTARTS = Counter("llmops_supervisor_restarts_total", "Processes restarted after they exited, by process.",
                   ["process"])
UP = Gauge("llmops_supervisor_process_up", "1 while the process runs, 0 while it waits for its restart.",
           ["process"])

ORPHANED = 129  # what a child exits with when its parent died before the flag was set


def die_with_parent(argv: list[str], parent: int | None = None) -> list[str]:
    """argv, run so that the kernel sends it SIGTERM when `parent` (this process) dies.

    setpriv sets the flag, which survives the exec; sh then reads its parent, which is `parent` unless
    that died before the flag was set, and execs argv (same pid) or exits with ORPHANED."""
    parent = os.getpid() if parent is None else parent
    return ["setpriv", "--pdeathsig", "TERM", "--", "sh", "-c",
            f'[ "$PPID" = {parent} ] || exit {ORPHANED}; exec "$@"', "sh", *argv]


COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]


@dataclass(frozen=True)
class Backoff:
    """Restart delays: initial, doubling up to maximum; back to initial once a run lasted `stable_s`."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    stable_s: float = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay_s: float = 0.0
    restart_at: float | None = None
    pumps: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(self, commands: dict[str, list[str]], *, env: dict[str, str], cwd: str,
                 env_of: dict[str, dict[str, str]] | None = None, backoff: Backoff = Backoff(),
                 grace_s: float = 10.0, say: Callable[[str], None] | None = None,
                 on_line: Callable[[str, str, bytes], None] | None = None) -> None:
        """env is every child's environment; env_of[name] adds to it for one child. say gets the supervisor's
        own lines (a process started, exited, restarted); on_line(name, "stdout" or "stderr", line) every line
        a child writes (default: onto stdout after its name)."""
        self._children = {name: Child(name, argv) for name, argv in commands.items()}
        self._env, self._cwd, self._backoff, self._grace = env, cwd, backoff, grace_s
        self._env_of = env_of or {}
        self._say = say or (lambda line: print(f"supervisor: {line}", flush=True))
        self._on_line = on_line or _prefixed(list(commands))
        self._stopping = threading.Event()

    @property
    def children(self) -> dict[str, Child]:
        return self._children

    def start(self) -> None:
        for child in self._children.values():
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        env = {**self._env, **self._env_of.get(child.name, {})}
        # Two pipes: a process's stdout may be something else than its log (Envoy's access log).
        child.popen = subprocess.Popen(die_with_parent(child.argv), cwd=self._cwd, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, process_group=0)
        child.started_at, child.restart_at = time.monotonic(), None
        UP.labels(child.name).set(1)
        again = f", restart #{child.restarts}" if child.restarts else ""
        self._say(f"{child.name} {'restarted' if child.restarts else 'started'} (pid {child.popen.pid}{again})")
        child.pumps = [threading.Thread(target=_pump, args=(child.name, name, stream, self._on_line), daemon=True)
                       for name, stream in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr))]
        for pump in child.pumps:
            pump.start()

    def run(self, poll_s: float = 0.2) -> None:
        """Supervise until stop() is called (from a signal handler or another thread)."""
        while not self._stopping.wait(poll_s):
            self.tick()

    def tick(self) -> None:
        if self._stopping.is_set():
            return
        now = time.monotonic()
        for child in self._children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    RESTARTS.labels(child.name).inc()
                    self._spawn(child)
                continue
            assert child.popen is not None
            code = child.popen.poll()
            if code is None:
                continue
            ran = now - child.started_at
            b = self._backoff
            child.delay_s = b.initial_s if ran >= b.stable_s or not child.delay_s else min(child.delay_s * 2,
                                                                                           b.maximum_s)
            child.restart_at = now + child.delay_s
            UP.labels(child.name).set(0)
            self._say(f"{child.name} exited ({_describe(code)}) after {ran:.1f}s; "
                      f"restarting in {child.delay_s:.1f}s (restart #{child.restarts + 1})")

    def stop(self) -> None:
        self._stopping.set()

    def shutdown(self) -> None:
        """SIGTERM every child, SIGKILL what is left after the grace period."""
        self._stopping.set()
        running = [c.popen for c in self._children.values() if c.popen is not None and c.popen.poll() is None]
        for popen in running:
            popen.terminate()
        deadline = time.monotonic() + self._grace
        for popen in running:
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _pump(name: str, stream_name: str, stream, on_line: Callable[[str, str, bytes], None]) -> None:  # noqa: ANN001
    for line in iter(stream.readline, b""):
        try:
            on_line(name, stream_name, line)
        except Exception as exc:  # noqa: BLE001 - a pump that stops leaves the child blocked on a full pipe
            sys.stderr.write(f"{name}: a line was lost: {exc!r}\n")


def _prefixed(names: list[str]) -> Callable[[str, str, bytes], None]:
    """Every line onto stdout after the colored name of its process."""
    lock = threading.Lock()

    def write(name: str, _stream: str, line: bytes) -> None:
        color = COLORS[names.index(name) % len(COLORS)]
        with lock:
            sys.stdout.write(f"{color}{name:>10}\033[0m | {line.decode(errors='replace')}")
            sys.stdout.flush()
    return write
