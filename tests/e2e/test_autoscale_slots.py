"""A real llama.cpp replica reports its busy slots on Triton's metrics port, and the local runtime's
autoscaler reads them there (tests/service/test_autoscale_slots.py: what it does with them)."""

from __future__ import annotations

import asyncio
import queue
import time

import tritonclient.grpc as grpcclient

from deployment.runtimes.local import SlotOccupancy, _metrics_text, slot_occupancy

from ..triton_helpers import RESPONSE_TIMEOUT_S, Triton, generation_inputs
from .test_triton_models import SMOLLM2, _serving, chat

# Greedy SmolLM2 writes all 64 tokens it may for this: the request stays in its slot while the test reads.
STORY = chat("Write a long story about a lighthouse keeper and a storm.")


def occupancy(triton: Triton) -> SlotOccupancy | None:
    """What the autoscaler reads from the replica's metrics port (the one triton_command was given)."""
    port = int(next(arg for arg in triton.process.args if arg.startswith("--metrics-port=")).split("=")[1])
    return slot_occupancy(asyncio.run(_metrics_text("127.0.0.1", port)))


def reads(triton: Triton, expected: SlotOccupancy, *, unless: queue.Queue | None = None) -> SlotOccupancy | None:
    """The replica's occupancy once it is `expected` (the model updates it between decoding steps, and Triton
    takes it from the model process), or the last reading when `unless` got something first."""
    deadline = time.monotonic() + RESPONSE_TIMEOUT_S
    while (seen := occupancy(triton)) != expected and time.monotonic() < deadline:
        if unless is not None and not unless.empty():
            break
        time.sleep(0.05)
    return seen


def test_a_llamacpp_replica_reports_the_request_in_its_slot_and_then_none(tmp_path):
    with _serving(tmp_path, SMOLLM2) as triton:
        idle, running = SlotOccupancy(running=0, waiting=0, slots=8), SlotOccupancy(running=1, waiting=0, slots=8)
        assert occupancy(triton) == idle  # the runtime's default: 8 slots

        final: queue.Queue = queue.Queue()
        errors: queue.Queue = queue.Queue()

        def on_response(result: grpcclient.InferResult | None, error: Exception | None) -> None:
            if error is not None:
                errors.put(error)
            elif result.get_response().parameters["triton_final_response"].bool_param:
                final.put(result)

        client = grpcclient.InferenceServerClient(triton.url)
        client.start_stream(callback=on_response)
        try:
            client.async_stream_infer(triton.llm, generation_inputs(STORY, max_tokens=64, stream=True))
            # While the request runs: read before its final response came.
            assert reads(triton, running, unless=final) == running
            final.get(timeout=RESPONSE_TIMEOUT_S)
        finally:
            client.stop_stream()
            client.close()
        assert errors.empty()
        assert reads(triton, idle) == idle  # after it: the slot is free again
