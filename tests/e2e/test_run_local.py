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

from shared import api

from ..helpers import REPO_ROOT, free_port, free_port_run


def test_launcher_serves_and_stops_without_orphans(tmp_path):
    processes = [c.name for c in api.components()] + ["reflection"]  # what `make up` starts, as it derives it
    ports = {name: free_port() for name in ("GATEWAY", "GATEWAY_ADMIN", "SUPERVISOR_METRICS",
                                            *(p.upper() for p in processes))}
    first_metrics = free_port_run(len(processes))  # one /metrics per service process, in this order
    env = {**os.environ, "LLMOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
           "LLMOPS_SERVING_DIR": str(tmp_path / "serving"), "LLMOPS_METRICS_PORT": str(first_metrics),
           **{f"LLMOPS_{name}_PORT": str(port) for name, port in ports.items()}}
    launcher = subprocess.Popen([sys.executable, str(REPO_ROOT / "deploy" / "scripts" / "run_local.py")],
                                env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{ports['GATEWAY']}/llm-ops/v1/catalog/models?ownerTeam=platform"
        deadline, models = time.monotonic() + 60, []
        while time.monotonic() < deadline and len(models) < 2:
            try:
                response = requests.get(url, headers={"X-User-Id": "admin"}, timeout=2)
                if response.status_code == 200:
                    models = [m for m in response.json()["data"]["models"] if m["status"] == "approved"]
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 5  # registry, deployment, router, reflection, envoy
        # The bundled models are in the catalog, registered and approved through the API.
        assert {(m["name"], m["status"]) for m in models} == {
            ("smollm2-135m-instruct", "approved"), ("multilingual-e5-small", "approved")}
        # The router follows the deployment service's internal watch: `make up` gave them one credential.
        served = requests.get(f"http://127.0.0.1:{ports['GATEWAY']}/v1/models", headers={"X-User-Id": "u"}, timeout=10)
        assert served.status_code == 200, served.text
        # Each service its own /metrics, from LLMOPS_METRICS_PORT on (one shared port would fail all but one).
        exposed = [requests.get(f"http://127.0.0.1:{first_metrics + i}/metrics", timeout=5).text
                   for i in range(len(processes))]
        assert all("llmops_grpc_requests_total" in text for text in exposed)
        assert any('service="registry"' in text for text in exposed)  # the calls above, counted where they ran
        # The supervisor's own metrics: every process up, none restarted.
        metrics = requests.get(f"http://127.0.0.1:{ports['SUPERVISOR_METRICS']}/metrics", timeout=5).text
        for name in (*processes, "envoy"):
            assert f'llmops_supervisor_process_up{{process="{name}"}} 1.0' in metrics, metrics
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert launcher.returncode == 0
