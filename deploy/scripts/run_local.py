"""`make up`: every service of the platform plus Envoy, in the foreground,
on the embedded defaults, supervised: a process that exits is restarted with
backoff while the others keep serving (Triton replicas outlive a restart of the
deployment service, the router serves from its route table). Ctrl-C (or
SIGTERM) stops them all, replicas included.

The terminal shows what a person acts on (process starts, exits and restarts, warnings,
errors, rollouts) and the banner; every line of every process goes to its file under
LLMOPS_LOG_DIR (var/log), and to the terminal too with --verbose (process_output.py)."""

from __future__ import annotations

import argparse
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
from process_output import ProcessOutput  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="every line of every process in the terminal too "
                                                               "(LLMOPS_LOG_VERBOSE)")
    args = parser.parse_args(argv)
    settings = get_settings()
    # JSON whatever LLMOPS_LOG_JSON says: the files keep it for grep and shippers, the terminal renders it.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services"), "PYTHONUNBUFFERED": "1", "LLMOPS_LOG_JSON": "true"}
    if settings.service_token is None:  # one for this run, known only to the processes started here
        env["LLMOPS_SERVICE_TOKEN"] = secrets.token_urlsafe(32)
    # Every component the protos name whose package exists (shared/api.py), and reflection for all.
    services = {name: settings.port_of(name) for name in [*(c.name for c in api.components()), "reflection"]}
    envoy_config = render_envoy_config(
        settings, clusters={name: (settings.host, port) for name, port in services.items()},
        out_dir=Path(settings.serving_dir).parent / "gateway")  # var/gateway: beside this install's state
    commands = {name: [sys.executable, "-m", name] for name in services}
    # No hot restart: a restarted Envoy must not trip over the shared memory of the one that died.
    # Its access log reaches envoy-access.log within a second, not the default 10 s.
    commands["envoy"] = [str(Path(sys.executable).parent / "envoy"), "-c", str(envoy_config),
                         "--log-level", "warn", "--disable-hot-restart", "--file-flush-interval-msec", "1000"]
    output = ProcessOutput(settings.log_dir, commands, access_logs={"envoy"}, verbose=args.verbose or
                           settings.log_verbose, max_bytes=settings.log_file_max_bytes, terminal=sys.stdout)
    supervisor = Supervisor(commands, env=env, env_of=_metrics_ports(settings, services), cwd=str(ROOT),
                            grace_s=settings.shutdown_grace_s + 5, say=output.say, on_line=output.line)
    if settings.supervisor_metrics_port:
        try:
            start_http_server(settings.supervisor_metrics_port, addr=settings.metrics_address)
        except OSError as exc:  # metrics are worth a warning, not a platform that does not start
            output.say(f"no /metrics on port {settings.supervisor_metrics_port}: {exc}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stop())
    supervisor.start()
    threading.Thread(target=_announce, args=(settings, services, output), daemon=True).start()
    supervisor.run()
    output.say("stopping every process")
    supervisor.shutdown()
    # Triton replicas outlive a deployment-service restart on purpose; not the platform's.
    if settings.serving_runtime == "local":
        from deployment.runtimes.local import stop_all
        stop_all(settings.serving_dir)
    output.say("stopped")
    output.close()
    return 0


def _metrics_ports(settings, services: dict[str, int]) -> dict[str, dict[str, str]]:  # noqa: ANN001
    """LLMOPS_METRICS_PORT is the first of consecutive ports, one per service, in the order of
    `services`: each process serves its own /metrics (one shared port would fail all but one).
    Unset, they start at LOCAL_METRICS_PORT; 0 turns them off."""
    first = settings.metrics_port if "metrics_port" in settings.model_fields_set else LOCAL_METRICS_PORT
    if not first:
        return {}
    return {name: {"LLMOPS_METRICS_PORT": str(first + i)} for i, name in enumerate(services)}


def _announce(settings, services: dict[str, int], output: ProcessOutput) -> None:  # noqa: ANN001
    if not (_wait_port(settings.gateway_port, 60) and all(_wait_port(p, 60) for p in services.values())):
        output.say(f"the platform did not come up within 60s; see the lines above and {_shown(output.log_dir)}/")
        return
    base = f"http://localhost:{settings.gateway_port}/llm-ops/v1"
    try:
        models = "\n".join(f"  {m['name']:<24} {m['type']:<10} modelId {m['id']}" for m in seed(base))
    except (OSError, RuntimeError) as exc:
        models = f"  (could not seed the bundled models: {exc})"
    output.announce(f"\nLLM Ops platform is up: REST and gRPC on http://localhost:{settings.gateway_port}\n"
                    f"{_exposure(settings)}\n"
                    f"Bundled models, approved and ready to deploy:\n{models}\n"
                    f"Try: curl {base}/catalog/models -H 'X-User-Id: admin' -H 'X-User-Roles: admin'\n"
                    f"{_logs(output)}\n"
                    "Ctrl-C stops everything.\n")


def _logs(output: ProcessOutput) -> str:
    where = _shown(output.log_dir)
    files = f"Logs: {where}/<process>.log, every line of each process (Envoy's access log: {where}/envoy-access.log)"
    if output.verbose:
        return f"{files}; all of them here too (verbose)"
    return (f"{files}\nHere: starts, exits and restarts, warnings, errors, rollouts; "
            "`make up VERBOSE=1` shows every line")


def _shown(path: Path) -> str:
    """path as a person types it here: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
