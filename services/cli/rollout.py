"""--wait: follow an endpoint until its active revision is healthy, fails, or the
timeout passes, showing the replicas as they become ready (a live display on a
terminal, a line per change elsewhere)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmops.v1 import deployment_pb2

from .errors import ExitCode
from .render import console

POLL_S = 0.5


def verdict(endpoint: deployment_pb2.Endpoint) -> ExitCode | None:
    """The exit code once the rollout is over, None while it runs. The deployment service keeps
    the old revision's replicas serving when a new one fails to apply (degraded, with a reason
    that names the failed revision), so that is a failed rollout too, not a wait."""
    if endpoint.status == "healthy":
        return ExitCode.OK
    if endpoint.status in ("failed", "deleted"):
        return ExitCode.ROLLOUT_FAILED
    if endpoint.status == "degraded" and endpoint.status_reason.startswith(f"revision {endpoint.revision} failed"):
        return ExitCode.ROLLOUT_FAILED
    return None


def replicas(endpoint: deployment_pb2.Endpoint) -> tuple[int, int]:
    """(ready, wanted): wanted is at least min_replicas, before the runtime has said how many."""
    return endpoint.ready_replicas, max(endpoint.desired_replicas, endpoint.min_replicas, 1)


def summary(endpoint: deployment_pb2.Endpoint) -> str:
    ready, wanted = replicas(endpoint)
    line = f"endpoint {endpoint.name} ({endpoint.environment}) revision {endpoint.revision}: {endpoint.status}, " \
           f"{ready}/{wanted} replicas ready"
    return f"{line}: {endpoint.status_reason}" if endpoint.status_reason else line


class LiveDisplay:
    """A terminal's view: spinner, status, a bar of ready replicas and the reason, redrawn in place."""

    def __init__(self, out: Console) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("replicas ready"), TimeElapsedColumn(),
                                  TextColumn("{task.fields[reason]}", markup=False), console=out, transient=True)
        self._task = self._progress.add_task("", total=1, reason="")

    def __enter__(self) -> LiveDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, endpoint: deployment_pb2.Endpoint) -> None:
        ready, wanted = replicas(endpoint)
        self._progress.update(self._task, description=f"{endpoint.name} r{endpoint.revision} {endpoint.status}",
                              total=wanted, completed=ready, reason=endpoint.status_reason)


class LineDisplay:
    """A pipe's or a log's view: one line each time what the terminal would show changes."""

    def __init__(self, out: Console) -> None:
        self._out, self._last = out, ""

    def __enter__(self) -> LineDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, endpoint: deployment_pb2.Endpoint) -> None:
        line = summary(endpoint)
        if line != self._last:
            self._out.print(line, soft_wrap=True, markup=False)
            self._last = line


def wait_for_rollout(endpoint: deployment_pb2.Endpoint, fetch: Callable[[str], deployment_pb2.Endpoint],
                     timeout_s: float) -> tuple[deployment_pb2.Endpoint, ExitCode]:
    """Poll until the rollout is over or `timeout_s` passes; prints the final state line on stderr."""
    out = console(stderr=True)
    deadline = time.monotonic() + timeout_s
    with LiveDisplay(out) if out.is_terminal else LineDisplay(out) as display:
        while True:
            display.update(endpoint)
            code = verdict(endpoint)
            remaining = deadline - time.monotonic()
            if code is None and remaining <= 0:
                code = ExitCode.TIMEOUT
            if code is not None:
                break
            time.sleep(min(POLL_S, remaining))
            endpoint = fetch(endpoint.id)
    out.print(final_line(endpoint, code, timeout_s), soft_wrap=True, markup=False)
    return endpoint, code


def final_line(endpoint: deployment_pb2.Endpoint, code: ExitCode, timeout_s: float) -> str:
    ready, wanted = replicas(endpoint)
    name = f"endpoint {endpoint.name} ({endpoint.environment}) revision {endpoint.revision}"
    if code is ExitCode.OK:
        return f"{name} is healthy: {ready}/{wanted} replicas ready"
    if code is ExitCode.ROLLOUT_FAILED:
        return f"{name} {endpoint.status}: {endpoint.status_reason or 'no reason given'}"
    return f"timed out after {timeout_s:g} s waiting for {summary(endpoint).removeprefix('endpoint ')}"
