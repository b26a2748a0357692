"""The peer gateway: LiteLLM's proxy in front of an OpenAI-shaped mock, from a virtual
environment of its own (build/bench-litellm, made by `make bench`: its pins are not ours)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from .stack import ROOT, die_with_parent, free_ports, wait_for

VENV = ROOT / "build" / "bench-litellm"
LITELLM = "litellm[proxy]==1.108.7"


def version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; "
                          "print(m.version('litellm'))"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


class LiteLLM:
    def __init__(self, work: Path, delay_ms: int) -> None:
        self.work = work
        self.mock_port, self.port = free_ports(2)
        self.delay_ms = delay_ms
        self.processes: list[subprocess.Popen] = []
        self.names: dict[int, str] = {}  # pid: what it runs
        self.mock = f"http://127.0.0.1:{self.mock_port}"
        # LiteLLM refuses to start without one; requests carry it as their API key.
        self.key = f"sk-bench-{secrets.token_hex(16)}"
        self.headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DELAY_MS": str(self.delay_ms), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": self.key}
        python = str(VENV / "bin" / "python")
        self._spawn("openai-mock", [python, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "openai_mock:app",
                                    "--host", "127.0.0.1", "--port", str(self.mock_port), "--log-level", "warning",
                                    "--no-access-log"], env)
        config = self.work / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: mock\n"
            "    litellm_params:\n"
            "      model: openai/mock\n"
            f"      api_base: {self.mock}/v1\n"
            "      api_key: bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n")
        self._spawn("litellm", [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                                "--port", str(self.port), "--num_workers", "1"], env)
        wait_for(lambda: self._answers(self.mock) and self._answers(self.base), timeout, "LiteLLM and its mock")

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        log = (self.work / f"{name}.log").open("wb")
        process = subprocess.Popen(die_with_parent(argv), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        self.names[process.pid] = name

    def _answers(self, base: str) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{self.names[process.pid]} exited ({process.returncode}); see {self.work}")
        try:
            r = requests.post(f"{base}/v1/chat/completions", timeout=5, headers=self.headers,
                              json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
        except requests.RequestException:
            return False
        return r.status_code == 200

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def install() -> None:
    """`make bench`: the peer's own virtual environment, once (pip's resolver, not ours, picks its pins)."""
    marker = VENV / ".installed"
    if marker.exists() and LITELLM in marker.read_text():
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM], check=True)
    marker.write_text(LITELLM)


if __name__ == "__main__":
    install()
