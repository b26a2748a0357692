"""What `make up` puts in the terminal and what in its log files (deploy/scripts/process_output.py),
with no process started: a line per call goes to its process's file only, Envoy's access log to a
file of its own; starts, exits, warnings, errors and rollouts reach the terminal as readable lines;
files stay bounded."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy" / "scripts"))
from process_output import LogFile, ProcessOutput, parse, render, shown  # noqa: E402

RPC = {"method": "/llmops.v1.RegistryService/ListModels", "code": "OK", "latency_ms": 1.2, "request_id": "req-1",
       "user": "admin", "event": "rpc", "level": "info", "timestamp": "2026-01-01T12:00:00.000000Z"}
ROLLOUT = {"endpoint": "6f1c", "name": "chat-model", "environment": "dev", "revision": 2, "reason": "rollback",
           "notice": True, "event": "rollout started", "level": "info", "timestamp": "2026-01-01T12:00:00Z"}
FAILED = {"endpoint": "6f1c", "name": "chat-model", "status": "failed", "previous": "deploying",
          "reason": "revision 1 failed: no such file", "event": "endpoint status changed", "level": "warning",
          "timestamp": "2026-01-01T12:00:00Z", "notice": True}
CRASH = {"event": "controller round failed; retrying", "level": "error", "timestamp": "2026-01-01T12:00:00Z",
         "exception": "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom"}
ACCESS = {"time": "2026-01-01T12:00:00.000Z", "request_id": "req-1", "method": "GET",
          "path": "/llm-ops/v1/catalog/models", "grpc_path": "/llm-ops/v1/catalog/models", "protocol": "HTTP/1.1",
          "status": 200, "duration_ms": 3, "user_id": "admin", "upstream_cluster": "registry", "response_flags": "-"}
ENVOY_WARNING = "[2026-01-01 12:00:00.000][7][warning][config] [source/common/config.cc:1] something deprecated"


def raw(line: dict) -> bytes:
    return json.dumps(line).encode() + b"\n"


def output(tmp_path: Path, *, verbose: bool = False, max_bytes: int = 0) -> tuple[ProcessOutput, io.StringIO]:
    terminal = io.StringIO()
    return ProcessOutput(tmp_path / "log", ["registry", "deployment", "envoy"], access_logs={"envoy"},
                         verbose=verbose, max_bytes=max_bytes, terminal=terminal), terminal


def shown_texts(terminal: io.StringIO) -> list[tuple[str, str]]:
    """(process, text) of each terminal line: `HH:MM:SS <process> | <text>`."""
    lines = []
    for line in terminal.getvalue().splitlines():
        head, separator, text = line.partition(" | ")
        assert separator, line
        clock, process = head.split()
        assert len(clock) == 8 and clock.count(":") == 2, line
        lines.append((process, text))
    return lines


@pytest.mark.parametrize(("line", "access", "expected"), [
    (RPC, False, False),              # a call's line: the file only
    ({**RPC, "level": "debug"}, False, False),
    (ROLLOUT, False, True),           # marked notice: a person follows it
    (FAILED, False, True),
    ({**RPC, "level": "warning"}, False, True),
    (CRASH, False, True),
    (None, False, True),              # not JSON: a traceback, Envoy's own (warning-level) log
    (ACCESS, True, False),            # Envoy's access log: never, unless verbose
    (None, True, False),
])
def test_what_reaches_the_terminal(line, access, expected):
    assert shown(line, access=access) is expected


def test_a_service_line_is_rendered_for_a_person():
    [text] = render(json.dumps(ROLLOUT), ROLLOUT, access=False)
    assert text == "rollout started  endpoint=6f1c name=chat-model environment=dev revision=2 reason=rollback"
    [text] = render(json.dumps(FAILED), FAILED, access=False)
    assert text.startswith("WARNING endpoint status changed  ")
    assert 'reason="revision 1 failed: no such file"' in text  # a value with spaces stays one value
    assert "timestamp" not in text and "notice" not in text and "{" not in text


def test_an_error_brings_its_traceback_on_the_lines_below():
    lines = render(json.dumps(CRASH), CRASH, access=False)
    assert lines == ["ERROR controller round failed; retrying", "Traceback (most recent call last):",
                     '  File "x.py", line 1', "ValueError: boom"]


def test_an_access_line_is_rendered_as_method_path_status_duration():
    [text] = render(json.dumps(ACCESS), ACCESS, access=True)
    assert text == "GET /llm-ops/v1/catalog/models 200 3ms  upstream_cluster=registry request_id=req-1 user_id=admin"


def test_a_line_that_is_not_json_is_kept_as_it_is():
    assert parse(ENVOY_WARNING) is None and parse("{not json") is None and parse("[1, 2]") is None
    assert render(ENVOY_WARNING, None, access=False) == [ENVOY_WARNING]


def test_calls_go_to_files_and_what_matters_to_the_terminal(tmp_path):
    out, terminal = output(tmp_path)
    out.say("registry started (pid 41)")
    out.line("registry", "stderr", raw(RPC))
    out.line("deployment", "stderr", raw(ROLLOUT))
    out.line("deployment", "stderr", raw(CRASH))
    out.line("envoy", "stdout", raw(ACCESS))
    out.line("envoy", "stderr", ENVOY_WARNING.encode() + b"\n")
    out.say("registry exited (killed by SIGKILL) after 3.0s; restarting in 0.5s (restart #1)")
    out.close()

    shown_lines = shown_texts(terminal)
    assert shown_lines[0] == ("supervisor", "registry started (pid 41)")
    rollout = "rollout started  endpoint=6f1c name=chat-model environment=dev revision=2 reason=rollback"
    assert ("deployment", rollout) in shown_lines
    assert ("deployment", "ERROR controller round failed; retrying") in shown_lines
    assert ("deployment", "ValueError: boom") in shown_lines
    assert ("envoy", ENVOY_WARNING) in shown_lines
    assert shown_lines[-1][1].startswith("registry exited (killed by SIGKILL)")
    assert "req-1" not in terminal.getvalue()  # neither the call's line nor the access line
    assert all(not text.startswith("{") for _, text in shown_lines)

    log = tmp_path / "log"
    assert (log / "registry.log").read_bytes() == raw(RPC)  # as the process wrote it: JSON for grep and shippers
    assert (log / "deployment.log").read_bytes() == raw(ROLLOUT) + raw(CRASH)
    assert (log / "envoy-access.log").read_bytes() == raw(ACCESS)
    assert (log / "envoy.log").read_text() == ENVOY_WARNING + "\n"
    supervisor = [json.loads(line) for line in (log / "supervisor.log").read_text().splitlines()]
    assert supervisor[0]["event"] == "registry started (pid 41)"
    assert all({"timestamp", "level", "event"} <= set(line) for line in supervisor)


def test_verbose_shows_every_line_readable(tmp_path):
    out, terminal = output(tmp_path, verbose=True)
    out.line("registry", "stderr", raw(RPC))
    out.line("envoy", "stdout", raw(ACCESS))
    out.close()
    assert shown_texts(terminal) == [
        ("registry", ("rpc  method=/llmops.v1.RegistryService/ListModels code=OK latency_ms=1.2 request_id=req-1 "
                      "user=admin")),
        ("envoy", "GET /llm-ops/v1/catalog/models 200 3ms  upstream_cluster=registry request_id=req-1 user_id=admin"),
    ]
    assert (tmp_path / "log" / "registry.log").read_bytes() == raw(RPC)  # in the file as well


def test_every_file_of_the_run_starts_empty_and_the_last_runs_is_kept_once(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    (log / "registry.log").write_text("second-to-last run\n")
    (log / "registry.log.1").write_text("older\n")
    (log / "envoy-access.log").write_text("last run's requests\n")
    out, _ = output(tmp_path)
    out.close()
    assert (log / "registry.log").read_text() == "" and (log / "registry.log.1").read_text() == "second-to-last run\n"
    assert (log / "envoy-access.log").read_text() == ""  # no request this run: not the last run's
    assert (log / "envoy-access.log.1").read_text() == "last run's requests\n"
    assert {p.name for p in log.glob("*.log")} == {"supervisor.log", "registry.log", "deployment.log", "envoy.log",
                                                   "envoy-access.log"}


def test_a_file_is_rotated_at_its_size_limit_and_only_one_old_one_is_kept(tmp_path):
    path = tmp_path / "router.log"
    log_file = LogFile(path, max_bytes=100)
    lines = [f"line {i:03d} ".encode() + b"x" * 20 + b"\n" for i in range(40)]  # 30 bytes each
    for line in lines:
        log_file.write(line)
    log_file.close()
    assert path.stat().st_size <= 100 and (tmp_path / "router.log.1").stat().st_size <= 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.log", "router.log.1"]
    kept = (tmp_path / "router.log.1").read_bytes() + path.read_bytes()
    assert kept.endswith(lines[-1]) and lines[-1] not in (tmp_path / "router.log.1").read_bytes()
    assert kept.splitlines(keepends=True) == lines[-len(kept.splitlines()):]  # whole lines, newest last


def test_a_line_longer_than_the_limit_is_still_written_whole(tmp_path):
    log_file = LogFile(tmp_path / "envoy.log", max_bytes=10)
    log_file.write(b"a line longer than ten bytes\n")
    log_file.close()
    assert (tmp_path / "envoy.log").read_bytes() == b"a line longer than ten bytes\n"


def test_the_log_directory_is_beside_the_serving_state_unless_set(tmp_path, monkeypatch):
    for name in ("SERVING_DIR", "LOG_DIR", "LOG_VERBOSE", "LOG_FILE_MAX_BYTES"):
        monkeypatch.delenv(f"LLMOPS_{name}", raising=False)
    assert Settings(serving_dir=tmp_path / "serving", _env_file=None).log_dir == tmp_path / "log"
    assert Settings(serving_dir=tmp_path / "serving", log_dir=tmp_path / "elsewhere",
                    _env_file=None).log_dir == tmp_path / "elsewhere"
    defaults = Settings(_env_file=None)
    assert defaults.log_dir == REPO_ROOT / "var" / "log" and not defaults.log_verbose
    assert defaults.log_file_max_bytes == 10 * 1024 * 1024
