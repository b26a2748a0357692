"""`make up`'s supervisor: a process that exits is restarted with backoff,
logged and counted; shutdown stops everything, escalating to SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
from prometheus_client import REGISTRY

from ..helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "deploy" / "scripts"))
from supervisor import ORPHANED, Backoff, Supervisor, die_with_parent  # noqa: E402

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
        exits = [line for line in lines if "exited" in line]
        assert "crasher exited (exit code 3)" in exits[0] and "restarting in 0.0s (restart #1)" in exits[0]
        # A line for each start and each restart, with the pid.
        assert re.fullmatch(r"crasher started \(pid \d+\)", lines[0])
        assert lines[1] == f"sleeper started (pid {sleeper_pid})"
        assert any(re.fullmatch(r"crasher restarted \(pid \d+, restart #1\)", line) for line in lines)
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
        assert lines[0] == f"sleeper started (pid {first})"
        assert "sleeper exited (killed by SIGKILL)" in lines[1]
        assert lines[2] == f"sleeper restarted (pid {supervisor.children['sleeper'].popen.pid}, restart #1)"
    finally:
        supervisor.shutdown()


def test_shutdown_kills_what_ignores_sigterm_and_restarts_nothing(tmp_path):
    ready = tmp_path / "ignoring-sigterm"
    supervisor = Supervisor({"stubborn": [sys.executable, "-c", STUBBORN, str(ready)], "sleeper": SLEEPER},
                            env=dict(os.environ), cwd=str(REPO_ROOT), grace_s=1.0, say=lambda line: None)
    supervisor.start()
    stubborn = supervisor.children["stubborn"].popen
    run_until(supervisor, ready.exists)
    assert supervisor.children["stubborn"].restarts == 0  # the first one wrote the file: it is the one stopped
    supervisor.shutdown()
    assert stubborn.poll() == -signal.SIGKILL
    assert supervisor.children["sleeper"].popen.poll() == -signal.SIGTERM
    supervisor.tick()  # stopped: nothing is restarted
    assert all(child.restarts == 0 for child in supervisor.children.values())


def test_children_get_sigterm_when_the_supervisor_is_killed(tmp_path):
    """kill -9 of the supervisor leaves no child behind: the kernel sends each SIGTERM."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from supervisor import Supervisor; "
            f"s = Supervisor({{'sleeper': {SLEEPER!r}}}, env={{}}, cwd='/', say=lambda line: None); s.start(); "
            "print(s.children['sleeper'].popen.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(REPO_ROOT / "deploy" / "scripts")],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.ppid() == parent.pid
        parent.kill()
        parent.wait(10)
        child.wait(10)  # raises TimeoutExpired if it outlived the supervisor
    finally:
        parent.kill()
        parent.wait(10)


def test_a_child_whose_parent_died_before_the_flag_was_set_exits_at_once(tmp_path):
    """The flag only covers a parent that dies after it is set: a child that finds another parent goes."""
    ran = tmp_path / "ran"
    argv = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(ran)]
    not_us = os.getppid()  # any pid other than the one that spawns it, as if that had died already
    assert subprocess.run(die_with_parent(argv, parent=not_us), timeout=30).returncode == ORPHANED
    assert not ran.exists()
    assert subprocess.run(die_with_parent(argv), timeout=30).returncode == 0 and ran.exists()
