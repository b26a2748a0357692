"""A real Triton replica of the local runtime with LLMOPS_SERVING_ADVERTISE_HOST set, as compose's
deployment service runs it (the rest of the compose checks are tests/service/test_containers.py)."""

from __future__ import annotations

from pathlib import Path

import psutil
import tritonclient.grpc as grpcclient

from deployment.domain import ModelSnapshot
from deployment.runtimes.base import ServingSpec
from deployment.runtimes.local import LocalRuntime
from shared.settings import Settings



def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def this_machines_address() -> str:
    """A non-loopback IPv4 address of this machine: what another container would dial."""
    addresses = [a.address for nics in psutil.net_if_addrs().values() for a in nics
                 if a.family.name == "AF_INET" and not a.address.startswith("127.")]
    assert addresses, "this machine has no non-loopback IPv4 address to advertise"
    return addresses[0]


def echo_spec(endpoint_id: str) -> ServingSpec:
    model = ModelSnapshot(id="m", name="echo", version="1", type="chat", runtime="echo", artifact_uri="builtin://echo")
    return ServingSpec(endpoint_id=endpoint_id, name="echo", environment="dev", route="/llm-ops/v1/serve/echo",
                       revision=1, model=model, min_replicas=1, max_replicas=1, cpu_target=70)


async def test_a_replica_advertised_off_loopback_listens_and_answers_there(tmp_path):
    """The local runtime with LLMOPS_SERVING_ADVERTISE_HOST set, as compose's deployment service:
    a real Triton replica binds every interface and the route table gets the advertised address."""
    host = this_machines_address()
    settings = Settings(_env_file=None, serving_dir=tmp_path / "serving", serving_advertise_host=host,
                        triton_ready_timeout_s=120, reconcile_interval_s=60)
    runtime = LocalRuntime(settings)
    await runtime.start()
    try:
        await runtime.apply(echo_spec("ep-advertised"))
        (replica,) = (await runtime.status("ep-advertised")).replicas
        advertised, port = host_port(replica.grpc_address)
        assert advertised == host
        tritonserver = next(p for p in triton_processes(settings.serving_dir))
        listening = {c.laddr.ip for c in tritonserver.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening and listening <= {"0.0.0.0", "::"}, listening  # every interface (gRPC binds dual-stack)
        assert grpcclient.InferenceServerClient(replica.grpc_address).is_model_ready("llm")
    finally:
        await runtime.remove("ep-advertised")
        await runtime.close()


def triton_processes(root: Path) -> list[psutil.Process]:
    from deployment.runtimes.local import triton_processes_under
    return [p for p in triton_processes_under(root.resolve()) if Path(p.cmdline()[0]).name == "tritonserver"]
