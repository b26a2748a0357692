"""`make up`'s terminal, as a person sees it: the banner, a line per process start, exit and
restart, rollouts; no line per request. Those are in the files under the log directory the
banner names, as the processes wrote them (JSON)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from shared import api

from ..helpers import ADMIN, REPO_ROOT, approved_echo_model, make_up, make_up_ports, wait_for

WAIT_S = 180  # for things that are expected to happen (a restart, a rollout), not a speed bound
PROCESSES = [*(c.name for c in api.components()), "reflection", "envoy"]  # what `make up` starts
LINE = re.compile(r"^\d\d:\d\d:\d\d +(?P<process>[\w-]+) \| (?P<text>.*)$")


@dataclass
class Platform:
    launcher: subprocess.Popen
    api: str
    terminal: Path  # what `make up` printed

    def lines(self) -> list[tuple[str, str]]:
        """(process, text) of each line after a process's name (the banner has none)."""
        return [(m["process"], m["text"]) for m in map(LINE.match, self.terminal.read_text().splitlines()) if m]

    def said(self, pattern: str) -> list[re.Match]:
        """The supervisor's lines that match pattern."""
        return [m for process, text in self.lines() if process == "supervisor" and (m := re.fullmatch(pattern, text))]

    def log_dir(self) -> Path:
        """Where the banner says the log files are."""
        found = re.search(r"^Logs: (\S+)/<process>\.log", self.terminal.read_text(), re.MULTILINE)
        assert found, self.terminal.read_text()[-3000:]
        return REPO_ROOT / found[1]  # relative to where `make up` runs, or absolute

    def json_lines(self, name: str) -> list[dict]:
        path = self.log_dir() / f"{name}.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]




@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("make-up-output")
    # The test is a trusted proxy: the X-Request-Id it sends is kept, so its lines can be found.
    env = {"LLMOPS_GATEWAY_TRUSTED_PROXIES": '["127.0.0.1/32"]', "LLMOPS_METRICS_PORT": "0",
           "LLMOPS_LOG_LEVEL": "INFO", "LLMOPS_LOG_VERBOSE": "false", "LLMOPS_DRAIN_S": "0.5"}
    ports = make_up_ports()
    with make_up(root, ports, env, WAIT_S) as launcher:
        yield Platform(launcher, f"http://127.0.0.1:{ports['GATEWAY']}/llm-ops/v1", root / "platform.log")


def call(platform: Platform, method: str, path: str, request_id: str, **kwargs) -> requests.Response:
    headers = {**kwargs.pop("headers", ADMIN), "X-Request-Id": request_id}
    r = requests.request(method, f"{platform.api}{path}", headers=headers, timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
    return r


def test_the_terminal_has_the_banner_and_each_start_and_the_files_have_each_request(platform):
    request_id = f"up-output-{uuid.uuid4().hex}"
    call(platform, "GET", "/catalog/models?ownerTeam=platform", request_id)
    call(platform, "GET", "/serving/endpoints", request_id)
    logs = platform.log_dir()
    assert logs.parent == platform.terminal.parent  # beside the run's serving state, as the helper set it
    # Per-request lines are in the files the banner names, as JSON: Envoy's access log and each service's call.
    expected = {"/llm-ops/v1/catalog/models?ownerTeam=platform", "/llm-ops/v1/serving/endpoints"}
    wait_for("the access lines", lambda: {line["path"] for line in platform.json_lines("envoy-access")
                                          if line.get("request_id") == request_id} == expected)
    for service, method in (("registry", "ListModels"), ("deployment", "ListEndpoints")):
        wait_for(f"{service}'s line for the call", lambda service=service, method=method: [
            line for line in platform.json_lines(service)
            if line.get("request_id") == request_id and line.get("event") == "rpc" and line["method"].endswith(method)])

    text = platform.terminal.read_text()
    assert "LLM Ops platform is up" in text
    assert "make up VERBOSE=1" in text
    # One start line per process (a restart says "restarted").
    for name in PROCESSES:
        assert len(platform.said(rf"{name} started \(pid \d+\)")) == 1, text[-3000:]
    # No per-request line: neither this request's nor any call's, and nothing as JSON.
    assert request_id not in text
    assert not [t for _, t in platform.lines() if t.startswith(("{", "rpc "))], text[-3000:]
    assert '"event"' not in text and "/llm-ops/v1/catalog/models 200" not in text


def test_a_killed_service_shows_one_exit_line_and_one_restart_line(platform):
    [started] = platform.said(r"registry started \(pid (\d+)\)")
    victim = psutil.Process(int(started[1]))
    assert " -m registry" in " ".join(victim.cmdline())
    victim.kill()
    restarted = wait_for("registry restarted", lambda: platform.said(r"registry restarted \(pid (\d+), restart #1\)"))
    assert int(restarted[0][1]) != victim.pid
    wait_for("the registry answers again", lambda: requests.get(
        f"{platform.api}/catalog/models", headers=ADMIN, timeout=10).status_code == 200)
    time.sleep(1)  # a second exit line, if there were one, has had time to come
    exits = platform.said(r"registry exited \(killed by SIGKILL\) after [\d.]+s; restarting in [\d.]+s "
                          r"\(restart #1\)")
    assert len(exits) == 1 and len(platform.said(r"registry restarted .*")) == 1, platform.terminal.read_text()
    assert len(platform.said(r".* exited .*")) == 1  # nothing else went down with it
    assert psutil.pid_exists(int(restarted[0][1]))




def test_a_rollout_and_a_rollback_show_their_progress_and_result(platform):
    name = f"echo-{uuid.uuid4().hex[:8]}"
    body = {"modelId": approved_echo_model(platform), "environment": "dev", "route": f"/llm-ops/v1/serve/{name}",
            "minReplicas": 1, "maxReplicas": 1, "autoscalePolicy": {"cpuUtilization": 70}}
    endpoint_id = call(platform, "POST", "/serving/endpoints", f"deploy-{name}", json=body).json()["data"]["id"]

    def status_changes() -> list[str]:
        return [t for p, t in platform.lines() if p == "deployment" and t.startswith("endpoint status changed")
                and f"endpoint={endpoint_id}" in t]

    wait_for("healthy, in the terminal", lambda: any("status=healthy" in t for t in status_changes()))
    call(platform, "PATCH", f"/serving/endpoints/{endpoint_id}", f"update-{name}", json={"maxReplicas": 2})
    wait_for("revision 2 healthy", lambda: any("revision=2 status=healthy" in t for t in status_changes()))
    call(platform, "POST", f"/serving/endpoints/{endpoint_id}/rollback", f"rollback-{name}")
    wait_for("the rollback done", lambda: any("revision=3 status=healthy" in t for t in status_changes()))

    mine = [t for p, t in platform.lines() if p == "deployment" and f"endpoint={endpoint_id}" in t]
    starts = [t for t in mine if t.startswith("rollout started")]
    assert [re.search(r"reason=(\w+)", t)[1] for t in starts] == ["deploy", "update", "rollback"], mine
    assert all(f"name={name}" in t for t in starts)
    assert [t for t in mine if t.startswith("replica started")]  # the progress between
    requests.delete(f"{platform.api}/serving/endpoints/{endpoint_id}", headers=ADMIN, timeout=60).raise_for_status()
    wait_for("the delete, in the terminal", lambda: [t for p, t in platform.lines()
                                                     if t.startswith("endpoint deleted") and endpoint_id in t])
