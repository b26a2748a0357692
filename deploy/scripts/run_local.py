"""`make up`: every service of the platform plus Envoy, in the foreground,
on the embedded defaults, supervised: a process that exits is restarted with
backoff while the others keep serving (Triton replicas outlive a restart of the
deployment service, the router serves from its route table). Ctrl-C (or
SIGTERM) stops them all, replicas included."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from prometheus_client import start_http_server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(Path(__file__).parent))

from bundled_models import seed  # noqa: E402
from shared import api  # noqa: E402
from shared.gateway import render_envoy_config  # noqa: E402
from shared.settings import get_settings  # noqa: E402
from supervisor import Supervisor  # noqa: E402

LOCAL_METRICS_PORT = 9191  # the services' first /metrics port, after the supervisor's 9190


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def main() -> int:
    settings = get_settings()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services"), "PYTHONUNBUFFERED": "1"}
    if settings.service_token is None:  # one for this run, known only to the processes started here
        env["LLMOPS_SERVICE_TOKEN"] = secrets.token_urlsafe(32)
    # Every component the protos name whose package exists (shared/api.py), and reflection for all.
    services = {name: settings.port_of(name) for name in [*(c.name for c in api.components()), "reflection"]}
    envoy_config = render_envoy_config(
        settings, clusters={name: (settings.host, port) for name, port in services.items()},
        out_dir=Path(settings.serving_dir).parent / "gateway")  # var/gateway: beside this install's state
    commands = {name: [sys.executable, "-m", name] for name in services}
    # No hot restart: a restarted Envoy must not trip over the shared memory of the one that died.
    commands["envoy"] = [str(Path(sys.executable).parent / "envoy"), "-c", str(envoy_config),
                         "--log-level", "warn", "--disable-hot-restart"]
    supervisor = Supervisor(commands, env=env, env_of=_metrics_ports(settings, services), cwd=str(ROOT),
                            grace_s=settings.shutdown_grace_s + 5)
    if settings.supervisor_metrics_port:
        try:
            start_http_server(settings.supervisor_metrics_port, addr="127.0.0.1")
        except OSError as exc:  # metrics are worth a warning, not a platform that does not start
            print(f"supervisor: no /metrics on port {settings.supervisor_metrics_port}: {exc}", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop())
    supervisor.start()
    threading.Thread(target=_announce, args=(settings, services), daemon=True).start()
    supervisor.run()
    supervisor.shutdown()
    # Triton replicas outlive a deployment-service restart on purpose; not the platform's.
    if settings.serving_runtime == "local":
        from deployment.runtimes.local import stop_all
        stop_all(settings.serving_dir)
    return 0


def _metrics_ports(settings, services: dict[str, int]) -> dict[str, dict[str, str]]:  # noqa: ANN001
    """LLMOPS_METRICS_PORT is the first of consecutive ports, one per service, in the order of
    `services`: each process serves its own /metrics (one shared port would fail all but one).
    Unset, they start at LOCAL_METRICS_PORT; 0 turns them off."""
    first = settings.metrics_port if "metrics_port" in settings.model_fields_set else LOCAL_METRICS_PORT
    if not first:
        return {}
    return {name: {"LLMOPS_METRICS_PORT": str(first + i)} for i, name in enumerate(services)}


def _announce(settings, services: dict[str, int]) -> None:  # noqa: ANN001
    if not (_wait_port(settings.gateway_port, 60) and all(_wait_port(p, 60) for p in services.values())):
        print("the platform did not come up within 60s; see the lines above", flush=True)
        return
    base = f"http://localhost:{settings.gateway_port}/llm-ops/v1"
    try:
        models = "\n".join(f"  {m['name']:<24} {m['type']:<10} modelId {m['id']}" for m in seed(base))
    except (OSError, RuntimeError) as exc:
        models = f"  (could not seed the bundled models: {exc})"
    print(f"\nLLM Ops platform is up: REST and gRPC on http://localhost:{settings.gateway_port}\n"
          f"{_exposure(settings)}\n"
          f"Bundled models, approved and ready to deploy:\n{models}\n"
          f"Try: curl {base}/catalog/models -H 'X-User-Id: admin' -H 'X-User-Roles: admin'\n"
          "Ctrl-C stops everything.\n", flush=True)


def _exposure(settings) -> str:  # noqa: ANN001
    """Who can reach the gateway, said at start: in trusted-headers mode a header is an identity."""
    where = f"listening on {settings.gateway_listen_address}:{settings.gateway_port}"
    if settings.gateway_identity_mode == "jwt":
        return f"{where}; identity from verified JWTs"
    if settings.gateway_listen_address in ("127.0.0.1", "localhost", "::1"):
        return f"{where}; identity from X-User-Id/X-User-Roles headers, so this machine only"
    return (f"WARNING: {where} in trusted-headers mode: anyone who can reach it may send "
            "X-User-Roles: admin (LLMOPS_GATEWAY_LISTEN_ADDRESS opts in; use jwt mode on a network)")


if __name__ == "__main__":
    sys.exit(main())
