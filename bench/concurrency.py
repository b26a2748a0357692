"""The scenarios of issue 22: many users of one chat replica at once (concurrency) and tenants whose
long system prompts repeat (shared-prefix), each against llama.cpp's own server (bench/llama_server.py)
in the same run with the same slots, and the issue's targets printed as pass or miss (never failing the
run: a speed is a figure to read, not a test)."""

from __future__ import annotations

import functools
import itertools

from . import inprocess
from .clients import Http
from .llama_server import LlamaServer
from .load import StreamRun, stream_loop
from .scenarios import Bench, Row
from .stack import Endpoint
from .workload import TENANTS, chat_messages, tenant_messages

LEVELS = (1, 2, 4, 8, 16)
MAX_TOKENS = 32
PREFIX_MAX_TOKENS = 8  # what the shared-prefix scenario measures is the prompt's processing, not generation
# The targets, the platform against llama-server in the same run.
TOKENS_TARGET, TOKENS_TARGET_AT = 0.9, (1, 4, 8)  # aggregate tokens/s at least this share of llama-server's
TTFT_TARGET = 1.5                                 # TTFT p50 at most this multiple of llama-server's, every level
REUSE_TARGET = 3.0                                # TTFT p50 without prefix reuse over with it, at least
SCENARIO = "concurrency, streamed chat"
PREFIX_SCENARIO = f"shared prefix, {TENANTS} tenants"
SERIAL = "llama-cpp-python in-process, serial"
PLATFORM = "/v1/chat/completions"


def _caller(http: Http, model: str, messages, max_tokens: int):  # noqa: ANN001, ANN202
    """One streamed, greedy chat request per call, the n-th asking messages(n)."""
    counter = itertools.count()

    def call():  # noqa: ANN202
        return http.v1_chat_streamed({"model": model, "messages": messages(next(counter)), "max_tokens": max_tokens,
                                      "temperature": 0})
    return call


async def concurrency(bench: Bench, chat: Endpoint, llama: LlamaServer) -> list[Row]:
    """Streamed chat at 1 to 16 users of one replica (its default slots and admission), llama-server
    and the platform in turn at each level, then today's serial baseline: llama-cpp-python in a process
    of its own serving the same users one request at a time. Two rows a level, one per baseline."""
    ours = Http(bench.platform.base)
    theirs = Http(llama.base, {"Content-Type": "application/json"}, reuse=False)
    capacity = llama.slots * len(chat.replicas)  # the platform's: the same slots, times its replicas
    # Ten seconds a level for the full run: at 16 users a serial engine answers each user about once in 5 s.
    duration_s = bench.duration_s if bench.quick else 2 * bench.duration_s
    rows = []
    try:
        for users in LEVELS:
            peer = await stream_loop(_caller(theirs, "bench", chat_messages, MAX_TOKENS), concurrency=users,
                                     duration_s=duration_s)
            plat = await stream_loop(_caller(ours, chat.name, chat_messages, MAX_TOKENS), concurrency=users,
                                     duration_s=duration_s)
            serial, _ = await inprocess.run("chat", concurrency=users, duration_s=duration_s, max_tokens=MAX_TOKENS)
            rows.append(Row(SCENARIO, llama.describe(), PLATFORM, users, peer, plat, unit="tokens/s",
                            notes={**_rates(peer, plat), **targets(peer, plat, users, capacity)}))
            rows.append(Row(SCENARIO, SERIAL, PLATFORM, users, serial, plat, unit="tokens/s",
                            notes=_rates(serial, plat)))
    finally:
        await ours.close()
        await theirs.close()
    return rows


def _rates(base: StreamRun, plat: StreamRun) -> dict[str, float]:
    return {"base_rate": base.token_rate, "plat_rate": plat.token_rate}


def targets(peer: StreamRun, plat: StreamRun, users: int, capacity: int) -> dict[str, object]:
    """The issue's targets at this level: the ratios they are judged on, and "pass" or "miss" by target."""
    tokens_x = plat.token_rate / peer.token_rate if peer.token_rate else float("nan")
    ttft_x = plat.p50_ms / peer.p50_ms if peer.latencies_s and plat.latencies_s else float("nan")
    verdicts = {}
    if users in TOKENS_TARGET_AT:
        verdicts[f"tokens/s >={TOKENS_TARGET}x"] = _verdict(tokens_x >= TOKENS_TARGET)
    verdicts[f"TTFT p50 <={TTFT_TARGET}x"] = _verdict(ttft_x <= TTFT_TARGET)
    if users <= capacity:
        verdicts["none refused"] = _verdict(not plat.refused and not plat.failed)
    return {"tokens_x": tokens_x, "ttft_p50_x": ttft_x, "capacity": capacity, "targets": verdicts}


def _verdict(met: bool) -> str:
    return "pass" if met else "miss"


async def shared_prefix(bench: Bench, chat: Endpoint, llama: LlamaServer) -> list[Row]:
    """Tenants' long system prompts at 4 users: TTFT when the prompts repeat (a prefix cache can skip
    them) against when each opens with a fresh number (nothing to reuse), on llama-server and on the
    platform, the four measurements in turn. Before the repeating ones each tenant's prompt is sent once,
    unmeasured, as to a replica that has served the tenants for a while."""
    ours = Http(bench.platform.base)
    theirs = Http(llama.base, {"Content-Type": "application/json"}, reuse=False)
    servers = {"llama-server": (theirs, "bench"), PLATFORM: (ours, chat.name)}
    # Without reuse, 4 users' prompts take 16 s to process here (~250 prompt tokens/s on 2 cores): 30 s
    # gives the unique runs about ten answers, the repeating ones hundreds.
    duration_s = bench.duration_s if bench.quick else 6 * bench.duration_s
    runs: dict[tuple[str, bool], StreamRun] = {}
    try:
        for reuse in (True, False):
            for label, (http, model) in servers.items():
                messages = functools.partial(tenant_messages, reuse=reuse)
                runs[label, reuse] = await stream_loop(_caller(http, model, messages, PREFIX_MAX_TOKENS),
                                                       concurrency=TENANTS, duration_s=duration_s,
                                                       warmup=TENANTS if reuse else 0)
    finally:
        await ours.close()
        await theirs.close()
    rows = []
    for label in servers:
        fresh, reused = runs[label, False], runs[label, True]
        speedup = fresh.p50_ms / reused.p50_ms if fresh.latencies_s and reused.latencies_s else float("nan")
        notes: dict[str, object] = {"reuse_speedup": speedup}
        if label == PLATFORM:
            notes["targets"] = {f"TTFT p50 unique/repeat >={REUSE_TARGET}x": _verdict(speedup >= REUSE_TARGET)}
        rows.append(Row(PREFIX_SCENARIO, f"{label}, every prompt unique", f"{label}, tenant prompts repeat", TENANTS,
                        fresh, reused, unit="", notes={**notes, "server": label}))
    return rows
