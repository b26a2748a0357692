"""The table, bench/results/<date>.json and a PNG of the latency distributions."""

from __future__ import annotations

import json
import math
import os
import platform as host
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .concurrency import MAX_TOKENS, PREFIX_SCENARIO, REUSE_TARGET, SERIAL, TENANTS
from .concurrency import SCENARIO as CONCURRENCY_SCENARIO
from .load import Run, StreamRun
from .scenarios import Row

OWN_TABLES = (CONCURRENCY_SCENARIO, PREFIX_SCENARIO)  # their rows are printed in tables of their own


def _ms(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else ""


def _throughput(run: Run, row: Row, which: str) -> float:
    if row.unit in ("tokens/s",):
        return float(row.notes.get(f"{which}_rate", float("nan")))
    if row.unit == "texts/s":
        return run.throughput * int(row.notes["batch"])
    return run.throughput if run.latencies_s and row.unit else float("nan")


def table(rows: list[Row]) -> Table:
    t = Table(title="make bench: platform against baseline, measured in the same run", show_lines=False)
    for name in ("scenario", "baseline", "platform", "c", "p50 ms base/plat", "p99 ms base/plat",
                 "added p50/p99 µs", "throughput base/plat", "ratio", "notes"):
        t.add_column(name, overflow="fold")
    for row in rows:
        if row.scenario in OWN_TABLES:
            continue
        base_t, plat_t = _throughput(row.base, row, "base"), _throughput(row.plat, row, "plat")
        has_base = bool(row.base.latencies_s) and bool(row.plat.latencies_s)
        added = (f"{(row.plat.p50_ms - row.base.p50_ms) * 1000:.0f} / {(row.plat.p99_ms - row.base.p99_ms) * 1000:.0f}"
                 if has_base and row.unit == "req/s" else "")
        t.add_row(row.scenario, row.baseline, row.platform, str(row.concurrency),
                  f"{_ms(row.base.p50_ms)} / {_ms(row.plat.p50_ms)}",
                  f"{_ms(row.base.p99_ms)} / {_ms(row.plat.p99_ms)}", added,
                  f"{_ms(base_t)} / {_ms(plat_t)} {row.unit}" if row.unit else "",
                  _ratio(plat_t, base_t) if row.unit else _ratio(row.plat.p50_ms, row.base.p50_ms),
                  ", ".join(f"{k}={_short(v)}" for k, v in {**row.notes, **_errors(row)}.items()))
    return t


def concurrency_table(rows: list[Row]) -> Table | None:
    """Per level of users: each server's aggregate tokens/s, TTFT, inter-token latency and unanswered
    requests; on the platform's line its ratios to llama-server and the issue's targets."""
    levels: dict[int, dict[str, Row]] = {}
    for row in rows:
        if row.scenario == CONCURRENCY_SCENARIO:
            levels.setdefault(row.concurrency, {})["serial" if row.baseline == SERIAL else "peer"] = row
    if not levels:
        return None
    t = Table(title=f"{CONCURRENCY_SCENARIO}, max_tokens {MAX_TOKENS}, users of one replica: the platform against "
                    "llama-server and against today's serial engine (issue 22's targets)")
    for name in ("c", "server", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "refused", "failed",
                 "tokens/s x", "TTFT p50 x", "targets"):
        t.add_column(name, overflow="fold")
    for users, pair in sorted(levels.items()):
        peer, serial = pair.get("peer"), pair.get("serial")
        lines = [(peer.baseline, peer.base)] if peer else []
        lines.append((f"platform {(peer or serial).platform}", (peer or serial).plat))
        if serial:
            lines.append((SERIAL, serial.base))
        for label, run in lines:
            judged = peer is not None and run is peer.plat
            notes = peer.notes if judged else {}
            t.add_row(str(users), label, f"{run.token_rate:.1f}", _ms(run.p50_ms), _ms(run.p99_ms),
                      _ms(run.gap_p50_ms), _count(run.refused, run.requests), _count(run.failed, run.requests),
                      _times(notes["tokens_x"]) if judged else "", _times(notes["ttft_p50_x"]) if judged else "",
                      ", ".join(f"{k} {v}" for k, v in notes.get("targets", {}).items()),
                      end_section=label == lines[-1][0])
    return t


def prefix_table(rows: list[Row]) -> Table | None:
    """Per server: TTFT when the tenants' system prompts repeat against when every one is unique."""
    shown = [row for row in rows if row.scenario == PREFIX_SCENARIO]
    if not shown:
        return None
    t = Table(title=f"{PREFIX_SCENARIO}, a system prompt of ~1,000 tokens each, {TENANTS} users: TTFT when the "
                    f"prompts repeat and when every one is unique (target: >={REUSE_TARGET}x on the platform)")
    for name in ("server", "TTFT p50 ms repeat/unique", "TTFT p99 ms repeat/unique", "unique/repeat p50",
                 "cached tokens repeat/unique", "prompt tokens", "refused/failed", "targets"):
        t.add_column(name, overflow="fold")
    for row in shown:
        reused, fresh = row.plat, row.base
        prompts = reused.prompt_tokens + fresh.prompt_tokens
        unanswered = sum(r.requests - len(r.latencies_s) for r in (reused, fresh))
        sent = reused.requests + fresh.requests
        t.add_row(str(row.notes["server"]), f"{_ms(reused.p50_ms)} / {_ms(fresh.p50_ms)}",
                  f"{_ms(reused.p99_ms)} / {_ms(fresh.p99_ms)}", _times(row.notes["reuse_speedup"]),
                  f"{reused.cached_tokens} / {fresh.cached_tokens}",
                  f"{min(prompts)}-{max(prompts)}" if prompts else "", f"{unanswered} of {sent}",
                  ", ".join(f"{k} {v}" for k, v in row.notes.get("targets", {}).items()))
    return t


def _times(ratio: float) -> str:
    return "" if math.isnan(ratio) else f"{ratio:.2f}x"


def _count(counter: dict[str, int], requests: int) -> str:
    return f"{sum(counter.values())} ({sum(counter.values()) / requests:.0%})" if counter else "0"


def _errors(row: Row) -> dict[str, object]:
    """Requests that got no answer, on either side: a scenario that hides them measures nothing."""
    errors = {}
    for side, run in (("base", row.base), ("plat", row.plat)):
        for kind, counter in (("refused", run.refused), ("failed", run.failed)):
            if counter and f"{kind}" not in row.notes:
                errors[f"{side}_{kind}"] = dict(counter)
    return errors


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": host.python_version(), "kernel": host.release()}


def write(rows: list[Row], out_dir: Path, extra: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    data = {"date": stamp, "machine": machine(), **extra, "rows": [_row_json(r) for r in rows]}
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=True))
    png_path = out_dir / f"{stamp}.png"
    plot(rows, png_path)
    return json_path, png_path


def _run_json(run: Run) -> dict:
    data = {"requests": run.requests, "answered": len(run.latencies_s), "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
            "throughput_per_s": run.throughput, "wall_s": run.wall_s, "refused": dict(run.refused),
            "failed": dict(run.failed)}
    if isinstance(run, StreamRun):
        data |= {"tokens": run.tokens, "tokens_per_s": run.token_rate, "itl_p50_ms": run.gap_p50_ms,
                 "cached_tokens": run.cached_tokens, "prompt_tokens_max": max(run.prompt_tokens, default=0)}
    return data


def _row_json(row: Row) -> dict:
    return {"scenario": row.scenario, "baseline": row.baseline, "platform": row.platform,
            "concurrency": row.concurrency, "unit": row.unit, "base": _run_json(row.base),
            "plat": _run_json(row.plat), "notes": row.notes}


def plot(rows: list[Row], path: Path) -> None:
    """One panel per row with latencies on both sides: the two distributions as CDFs (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    shown = [r for r in rows if len(r.plat.latencies_s) > 1]
    cols = 3
    rows_n = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, row in zip(axes.flat, shown):
        for run, label in ((row.base, row.baseline), (row.plat, row.platform)):
            if len(run.latencies_s) > 1:
                values = np.sort(np.array(run.latencies_s) * 1000)
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=f"{label} (n={len(values)})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor ticks' labels overlap
        ax.set_title(f"{row.scenario}, c={row.concurrency}", fontsize=9)
        ax.set_xlabel("latency ms (TTFT for generation)", fontsize=8)
        ax.set_ylabel("share of requests", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_table(rows: list[Row]) -> None:
    console = Console(width=220)
    console.print(table(rows))
    for extra in (concurrency_table(rows), prefix_table(rows)):
        if extra is not None:
            console.print(extra)
