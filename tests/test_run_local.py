"""`make up`'s launcher: everything comes up behind one port, and SIGINT
(Ctrl-C) stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import requests

from .conftest import REPO_ROOT, free_port


def test_launcher_serves_and_stops_without_orphans(tmp_path):
    ports = {name: free_port() for name in ("GATEWAY", "GATEWAY_ADMIN", "REGISTRY", "REFLECTION")}
    env = {**os.environ, "LLMOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
           **{f"LLMOPS_{name}_PORT": str(port) for name, port in ports.items()}}
    launcher = subprocess.Popen([sys.executable, str(REPO_ROOT / "deploy" / "scripts" / "run_local.py")],
                                env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{ports['GATEWAY']}/llm-ops/v1/catalog/models"
        deadline, response = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                response = requests.get(url, headers={"X-User-Id": "admin"}, timeout=2)
                if response.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        assert response is not None and response.json()["status"] == "success"
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 3  # registry, reflection, envoy
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert launcher.returncode == 0
