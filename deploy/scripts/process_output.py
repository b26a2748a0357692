"""Where the lines of `make up`'s processes go.

Every line, as the process wrote it, goes into that process's file under the log
directory (the services' JSON lines, Envoy's own log, its access log in a file of its
own), for grep and log shippers. The terminal gets, after the process's name, in a
form a person reads, only what a person acts on: the supervisor's own lines (a
process started, exited, restarted), warnings and errors, and lines a service marks
`notice=true` (a rollout, an endpoint's status change). Verbose: every line.

Each file is bounded: the previous run's file becomes `<name>.log.1` at start, and a
file that reaches max_bytes becomes `<name>.log.1` too (the one there before is
dropped), so a process never holds more than twice max_bytes on disk."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

SUPERVISOR = "supervisor"  # the name `make up`'s own lines carry
SHOWN_LEVELS = frozenset({"warning", "error", "critical", "exception"})
# Said by every service line, or by its place in the line: not repeated in the terminal.
UNRENDERED_KEYS = frozenset({"event", "level", "timestamp", "notice", "exception"})
ACCESS_KEYS = ("method", "path", "status", "duration_ms", "grpc_path", "upstream_cluster", "request_id", "user_id")
COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m", "\033[96m", "\033[95m"]
RESET = "\033[0m"


def parse(text: str) -> dict | None:
    """The JSON object a line holds; None for any other line."""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def shown(line: dict | None, *, access: bool) -> bool:
    """Whether a line goes to the terminal when not verbose. Access log lines never do. A line
    that is not JSON does: the services log JSON, so anything else is the interpreter or a library
    speaking outside the log (a crash's traceback), or Envoy's own log, which `make up` runs at
    warning level."""
    if access:
        return False
    if line is None:
        return True
    return line.get("notice") is True or str(line.get("level", "")).lower() in SHOWN_LEVELS


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value and not any(c in value for c in ' "=\n') else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def render(text: str, line: dict | None, *, access: bool) -> list[str]:
    """A line as the terminal shows it: a service's JSON line as `[LEVEL ]event  key=value ...` (and
    its traceback below), an access log line as `METHOD path status duration  key=value ...`, any
    other line as it is."""
    if line is None:
        return [text]
    if access:
        method, path, status, duration = (line.get(k) for k in ACCESS_KEYS[:4])
        head = f"{method} {path} {status} {duration}ms"
        fields = {k: line.get(k) for k in ACCESS_KEYS[4:] if line.get(k) not in (None, "", "-")}
        if fields.get("grpc_path") == path:
            fields.pop("grpc_path")
    else:
        level = str(line.get("level", "info")).lower()
        head = str(line.get("event", ""))
        if level not in ("info", "debug"):
            head = f"{level.upper()} {head}"
        fields = {k: v for k, v in line.items() if k not in UNRENDERED_KEYS}
    rendered = "  ".join([head, " ".join(f"{k}={_value(v)}" for k, v in fields.items())]) if fields else head
    exception = line.get("exception")
    return [rendered, *(str(exception).rstrip().splitlines() if exception and not access else [])]


class LogFile:
    """One file under the log directory, bounded as the module says; thread-safe."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self._max = path, max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            self._rotate()  # the previous run's, kept once for a look after a crash
        self._file = open(path, "ab")  # noqa: SIM115 - open for the life of the run
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self.path.replace(self.path.with_name(self.path.name + ".1"))

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._max and self._size and self._size + len(data) > self._max:
                self._file.close()
                self._rotate()
                self._file = open(self.path, "ab")  # noqa: SIM115
                self._size = 0
            self._file.write(data)
            self._file.flush()  # a line is in the file once written: for tail -f, grep and the tests
            self._size += len(data)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class ProcessOutput:
    """The files and the terminal of one `make up` run. processes: the names lines will come from,
    in the order the terminal colors them; access_logs: those whose stdout is an access log (to
    `<name>-access.log`, never in the terminal unless verbose)."""

    def __init__(self, log_dir: Path, processes: Iterable[str], *, access_logs: Iterable[str] = (),
                 verbose: bool = False, max_bytes: int = 0, terminal: TextIO, color: bool | None = None) -> None:
        self.log_dir, self.verbose = log_dir, verbose
        self._processes = [SUPERVISOR, *processes]
        self._access = set(access_logs)
        self._max = max_bytes
        self._terminal = terminal
        self._color = terminal.isatty() if color is None else color
        self._width = max(len(name) for name in self._processes)
        self._lock = threading.Lock()
        self._files: dict[str, LogFile] = {}
        for name in self._processes:  # every file this run writes starts now: none is left from the last run
            self._file(name)
            if name in self._access:
                self._file(f"{name}-access")

    def path_of(self, process: str, *, access: bool = False) -> Path:
        return self.log_dir / f"{process}{'-access' if access else ''}.log"

    def _file(self, name: str) -> LogFile:
        with self._lock:
            if name not in self._files:
                self._files[name] = LogFile(self.log_dir / f"{name}.log", self._max)
            return self._files[name]

    def line(self, process: str, stream: str, raw: bytes) -> None:
        """A line a process wrote on stream ("stdout" or "stderr"), with its newline."""
        access = stream == "stdout" and process in self._access
        self._file(f"{process}-access" if access else process).write(raw if raw.endswith(b"\n") else raw + b"\n")
        if access and not self.verbose:
            return  # the busiest stream: not even parsed
        text = raw.decode(errors="replace").rstrip("\r\n")
        parsed = parse(text)
        if self.verbose or shown(parsed, access=access):
            self._show(process, render(text, parsed, access=access))

    def say(self, text: str) -> None:
        """A line of `make up` itself (a process started or exited): the terminal and supervisor.log."""
        record = {"timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "level": "info",
                  "event": text}
        self._file(SUPERVISOR).write(json.dumps(record).encode() + b"\n")
        self._show(SUPERVISOR, [text])

    def announce(self, text: str) -> None:
        """Text for the terminal as it is, without a prefix (the banner)."""
        with self._lock:
            self._terminal.write(text if text.endswith("\n") else text + "\n")
            self._terminal.flush()

    def _show(self, process: str, lines: list[str]) -> None:
        name = f"{process:>{self._width}}"
        if self._color:
            index = self._processes.index(process) if process in self._processes else len(self._processes)
            name = f"{COLORS[index % len(COLORS)]}{name}{RESET}"
        prefix = f"{time.strftime('%H:%M:%S')} {name} | "
        with self._lock:
            self._terminal.write("".join(f"{prefix}{line}\n" for line in lines))
            self._terminal.flush()

    def close(self) -> None:
        for log_file in self._files.values():
            log_file.close()
