#!/usr/bin/env python3
"""`make up`: every service of the platform plus Envoy, in the foreground,
on the embedded defaults. Ctrl-C (or SIGTERM) stops them all; children also
get SIGTERM from the kernel if this process dies, so nothing is orphaned."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(Path(__file__).parent))

from bundled_models import seed  # noqa: E402
from shared.gateway import render_envoy_config  # noqa: E402
from shared.settings import get_settings  # noqa: E402

PR_SET_PDEATHSIG = 1
COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pump(name: str, color: str, stream) -> None:  # noqa: ANN001
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{color}{name:>10}\033[0m | {line.decode(errors='replace')}")
        sys.stdout.flush()


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
    services = {
        "registry": settings.registry_port,
        "deployment": settings.deployment_port,
        "router": settings.router_port,
        "reflection": settings.reflection_port,
    }
    envoy_config = render_envoy_config(
        settings, clusters={name: (settings.host, port) for name, port in services.items()},
        out_dir=ROOT / "build" / "gateway")
    commands = {name: [sys.executable, "-m", name] for name in services}
    commands["envoy"] = [str(Path(sys.executable).parent / "envoy"), "-c", str(envoy_config),
                         "--log-level", "warn", "--base-id", str(settings.gateway_port)]
    procs: dict[str, subprocess.Popen] = {}
    for i, (name, cmd) in enumerate(commands.items()):
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent)
        threading.Thread(target=_pump, args=(name, COLORS[i % len(COLORS)], procs[name].stdout), daemon=True).start()

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())

    if _wait_port(settings.gateway_port, 60) and all(_wait_port(p, 60) for p in services.values()):
        api = f"http://localhost:{settings.gateway_port}/llm-ops/v1"
        try:
            models = "\n".join(f"  {m['name']:<24} {m['type']:<10} modelId {m['id']}" for m in seed(api))
        except (OSError, RuntimeError) as exc:
            models = f"  (could not seed the bundled models: {exc})"
        print(f"\nLLM Ops platform is up: REST and gRPC on http://localhost:{settings.gateway_port}\n"
              f"Bundled models, approved and ready to deploy:\n{models}\n"
              f"Try: curl {api}/catalog/models -H 'X-User-Id: admin' -H 'X-User-Roles: admin'\n"
              "Ctrl-C stops everything.\n", flush=True)
    code = 0
    while not stopping.is_set():
        dead = [name for name, p in procs.items() if p.poll() is not None]
        if dead:
            print(f"{', '.join(dead)} exited (code {procs[dead[0]].returncode}); stopping the platform", flush=True)
            code = 1
            break
        stopping.wait(0.5)

    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # Triton replicas outlive a deployment-service restart on purpose; not the platform's.
    if settings.serving_runtime == "local":
        from deployment.runtimes.local import stop_all
        stop_all(settings.serving_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
