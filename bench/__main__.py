"""python -m bench [--quick]: start the platform and the peers, run every scenario, print the
table, write <out>/<date>.json and .png. --quick runs each measurement for a second, and fails
only if a scenario produced no numbers (never on a speed)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import concurrency, inprocess, llama_server, peer, report, scenarios
from .scenarios import Bench, Row
from .stack import ROOT, Endpoint, Platform


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one second per measurement (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument("--only", type=lambda v: v.split(","), default=list(SCENARIOS), metavar="NAME,...",
                        help=f"these scenarios only, of {','.join(SCENARIOS)} (the deploys run always)")
    args = parser.parse_args()
    if unknown := set(args.only) - set(SCENARIOS):
        parser.error(f"unknown scenarios {','.join(sorted(unknown))}; they are {','.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    began = time.monotonic()
    platform = Platform(work / "platform")
    litellm = peer.LiteLLM(work / "litellm", delay_ms=2)
    llama = llama_server.LlamaServer.like_replica(work / "llama-server", threads=inprocess.THREADS)
    # The peers' own builds are needed only by the scenarios that run them (`make bench` makes both).
    litellm_version = peer.version() if "peer" in args.only else None
    with_llama = bool(LLAMA_SCENARIOS & set(args.only))
    started = ["the platform", *([f"LiteLLM {litellm_version}"] if litellm_version else []),
               *(["llama-server"] if with_llama else [])]
    print(f"bench: starting {', '.join(started)} (logs in {work})", flush=True)
    try:
        platform.start()
        if "peer" in args.only:
            litellm.start()
        if with_llama:
            llama.start()
        bench = Bench(platform, duration_s=1.0 if args.quick else 5.0, quick=args.quick)
        rows = asyncio.run(run(bench, litellm, litellm_version, llama, args.only))
    finally:
        llama.stop()
        litellm.stop()
        platform.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.print_table(rows)
    json_path, png_path = report.write(rows, args.out, {
        "quick": args.quick, "only": args.only, "litellm": litellm_version,
        "llama_server": llama.describe(build=True) if with_llama else None,
        "took_s": round(time.monotonic() - began, 1)})
    print(f"bench: {json_path} and {png_path}, {time.monotonic() - began:.0f}s in all")
    empty = [f"{r.scenario} ({r.platform}, c={r.concurrency})" for r in rows
             if not r.plat.latencies_s or (r.baseline and not r.base.latencies_s)]
    if empty:
        print("bench: no numbers from: " + "; ".join(empty), file=sys.stderr)
        return 1
    return 0


SCENARIOS = ("gateway", "peer", "experiments", "generation", "concurrency", "shared-prefix", "embeddings", "overload",
             "control-plane")
LLAMA_SCENARIOS = {"concurrency", "shared-prefix"}  # against llama-server


async def run(bench: Bench, litellm: peer.LiteLLM, litellm_version: str | None, llama: llama_server.LlamaServer,
              only: list[str]) -> list[Row]:
    platform = bench.platform
    step = _steps()
    step("deploy: the bundled chat model (twice), echo models, the embedding model")
    bundled_chat = platform.bundled("smollm2-135m-instruct")
    deployed, chat = scenarios.deploy_to_healthy(platform, bundled_chat["id"], "bench-chat")
    generating = platform.deploy(scenarios.generation_model(platform, bundled_chat)["id"], "bench-generate")
    echo_model = scenarios.echo_model(platform, "bench-echo")
    bench.echo = platform.deploy(echo_model["id"], "bench-echo")
    delayed = platform.deploy(scenarios.echo_model(platform, "bench-echo-2ms", delay_ms=2)["id"], "bench-echo-2ms")
    embed = platform.deploy(platform.bundled("multilingual-e5-small")["id"], "bench-embed")
    selected = {
        "gateway": lambda: scenarios.gateway_overhead(bench),
        "peer": lambda: scenarios.peer_gateway(bench, litellm, delayed, litellm_version),
        "experiments": lambda: scenarios.experiment_cost(bench),
        "generation": lambda: scenarios.generation(bench, generating, max_tokens=8 if bench.quick else 32),
        "concurrency": lambda: concurrency.concurrency(bench, chat, llama),
        "shared-prefix": lambda: concurrency.shared_prefix(bench, chat, llama),
        "embeddings": lambda: scenarios.embeddings(bench, embed),
        "overload": lambda: scenarios.overload(bench, chat),
        "control-plane": lambda: control_plane(bench, delayed),
    }
    rows = [deployed]
    for name in SCENARIOS:
        if name in only:
            step(name)
            rows += await selected[name]()
    return rows


async def control_plane(bench: Bench, delayed: Endpoint) -> list[Row]:
    rows = await scenarios.list_endpoints(bench, bench.platform.work.parent / "control-plane", 10_000)
    return rows + await scenarios.rollback_under_traffic(bench, bench.echo, delayed_model_id(bench.platform, delayed))


def delayed_model_id(platform: Platform, endpoint) -> str:  # noqa: ANN001
    return platform.call("GET", f"/serving/endpoints/{endpoint.id}")["modelId"]


def _steps():  # noqa: ANN202
    began = time.monotonic()

    def step(name: str) -> None:
        print(f"bench: [{time.monotonic() - began:5.1f}s] {name}", flush=True)
    return step


if __name__ == "__main__":
    sys.exit(main())
