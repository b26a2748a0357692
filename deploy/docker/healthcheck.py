"""Container health checks of docker-compose.yml (Kubernetes probes gRPC health natively).

    healthcheck.py grpc PORT [SERVICE]   grpc.health.v1 Check on 127.0.0.1:PORT answers SERVING
    healthcheck.py http URL              URL answers 200 (Envoy's admin /ready)

Exit 0 when healthy; otherwise 1 and one line on stderr saying why, which `docker inspect`
shows as the check's output.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def grpc_health(port: int, service: str = "") -> str | None:
    """None when the server on this container's port says SERVING; otherwise why not."""
    import grpc  # only the services' image has grpc_health; the gateway's checks HTTP
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return f"port {port}: {exc.code().name} {exc.details() or ''}".rstrip()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"port {port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def http_ok(url: str) -> str | None:
    """None when url answers 200; otherwise why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (a local URL we name)
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


def main(argv: list[str]) -> int:
    match argv:
        case ["grpc", port] if port.isdigit():
            problem = grpc_health(int(port))
        case ["grpc", port, service] if port.isdigit():
            problem = grpc_health(int(port), service)
        case ["http", url]:
            problem = http_ok(url)
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
