"""`make up`'s supervisor: a process that exits is restarted with backoff,
logged and counted; shutdown stops everything, escalating to SIGKILL."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
from prometheus_client import REGISTRY

from .helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "deploy" / "scripts"))
from supervisor import Backoff, Supervisor  # noqa: E402

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]
STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open(sys.argv[1], 'w'); time.sleep(600)"


def restarts(name: str) -> float:
    return REGISTRY.get_sample_value("llmops_supervisor_restarts_total", {"process": name}) or 0.0


def run_until(supervisor: Supervisor, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the supervisor never got there"
        supervisor.tick()
        time.sleep(0.01)


def test_a_crashing_process_is_restarted_with_growing_backoff_and_counted():
    lines: list[str] = []
    before = restarts("crasher")
    supervisor = Supervisor({"crasher": CRASHER, "sleeper": SLEEPER}, env=dict(os.environ), cwd=str(REPO_ROOT),
                            backoff=Backoff(initial_s=0.01, maximum_s=0.04, stable_s=600), say=lines.append)
    supervisor.start()
    sleeper_pid = supervisor.children["sleeper"].popen.pid
    try:
        run_until(supervisor, lambda: supervisor.children["crasher"].restarts >= 4)
        crasher = supervisor.children["crasher"]
        assert crasher.delay_s == 0.04  # 0.01, 0.02, 0.04, then capped
        assert restarts("crasher") - before >= 4
        assert "crasher exited (exit code 3)" in lines[0] and "restarting in 0.0s (restart #1)" in lines[0]
        # The others are left alone.
        assert supervisor.children["sleeper"].popen.pid == sleeper_pid and supervisor.children["sleeper"].restarts == 0
    finally:
        supervisor.shutdown()
    assert not psutil.pid_exists(sleeper_pid) or psutil.Process(sleeper_pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_process_comes_back_with_a_new_pid():
    lines: list[str] = []
    supervisor = Supervisor({"sleeper": SLEEPER}, env=dict(os.environ), cwd=str(REPO_ROOT),
                            backoff=Backoff(initial_s=0.01), say=lines.append)
    supervisor.start()
    try:
        first = supervisor.children["sleeper"].popen.pid
        os.kill(first, signal.SIGKILL)
        run_until(supervisor, lambda: supervisor.children["sleeper"].popen.pid != first)
        assert psutil.Process(supervisor.children["sleeper"].popen.pid).is_running()
        assert "sleeper exited (killed by SIGKILL)" in lines[0]
    finally:
        supervisor.shutdown()


def test_shutdown_kills_what_ignores_sigterm_and_restarts_nothing(tmp_path):
    ready = tmp_path / "ignoring-sigterm"
    supervisor = Supervisor({"stubborn": [sys.executable, "-c", STUBBORN, str(ready)], "sleeper": SLEEPER},
                            env=dict(os.environ), cwd=str(REPO_ROOT), grace_s=1.0, say=lambda line: None)
    supervisor.start()
    stubborn = supervisor.children["stubborn"].popen
    run_until(supervisor, ready.exists)
    supervisor.shutdown()
    assert stubborn.poll() == -signal.SIGKILL
    assert supervisor.children["sleeper"].popen.poll() == -signal.SIGTERM
    supervisor.tick()  # stopped: nothing is restarted
    assert all(child.restarts == 0 for child in supervisor.children.values())
