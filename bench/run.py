"""Gateway overhead benchmark: the same load DIRECT (client → upstream) and through the GATEWAY.

``python -m bench.run [--quick] [--json out.json]`` starts the mock upstream, a redis-server and, for
each worker count, the gateway as child processes on loopback. By default every request takes the
whole pipeline: auth, Redis admission and settlement against a tenant budget and rpm/tpm limits,
routing, a response-cache lookup that misses (each request is unique) and its put, metrics, logs.
It measures each scenario directly and through each gateway, a memory soak, and 1,000 held streams,
and prints markdown tables (see bench/README.md). Exit status: 0 ok, 1 some request failed or a cache
answer was not a miss, 2 a child did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench.harness import REPO_ROOT, Stack, StackOptions
from bench.procs import raise_fd_limit
from bench.report import (
    ChunkCost,
    Measurement,
    chunk_table,
    hold_table,
    measurements_table,
    memory_ok,
    memory_table,
    overhead_table,
    overheads,
    table,
    throughput_table,
)
from bench.suite import Plan, Results, Suite
from bench.upstream import run_loop

QUICK_REQUESTS, QUICK_WARMUP_REQUESTS = 60, 20
UNBOUNDED = 10_000_000  # full runs stop on their duration


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return ()
    return values if values and min(values) >= 1 else ()


def parse_args(argv: list[str] | None) -> tuple[Plan, StackOptions, Path | None]:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Gateway overhead benchmark.")
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (well under a minute)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each run (default 1)")
    p.add_argument("--concurrency", default="1,16,64", help="connection counts (default 1,16,64)")
    p.add_argument("--workers", default="1,2", help="gateway worker counts to measure (default 1,2)")
    mode = p.add_argument_group("pipeline (default: all of it on)")
    mode.add_argument("--plain", action="store_true", help="= --no-redis --no-limits --no-cache")
    mode.add_argument("--no-redis", action="store_true", help="in-process store (one worker only)")
    mode.add_argument("--no-limits", action="store_true", help="no budget or rpm/tpm: no admission")
    mode.add_argument("--no-cache", action="store_true", help="no response cache on the bench routes")
    s = p.add_argument_group("streams")
    s.add_argument("--chunks", type=int, default=20, help="content chunks per stream (default 20)")
    s.add_argument("--long-chunks", type=int, default=200, help="chunks of the per-chunk run (default 200)")
    s.add_argument("--long-concurrency", type=int, default=16, help="its concurrency (default 16)")
    s.add_argument("--delay-ms", type=float, default=0.0, help="upstream pause before each chunk (default 0)")
    m = p.add_argument_group("memory and held streams")
    m.add_argument("--memory-requests", type=int, default=None, help="soak (100000; quick 2000; 0: none)")
    m.add_argument("--memory-warmup", type=int, default=None, help="requests before the baseline (1000)")
    m.add_argument("--memory-concurrency", type=int, default=16, help="soak connections (default 16)")
    m.add_argument("--hold-streams", type=int, default=None, help="streams held at once (1000; quick 100)")
    m.add_argument("--hold-delay-ms", type=float, default=None, help="their chunk pace (250; quick 20)")
    m.add_argument("--hold-ramp", type=float, default=0.0, help="open them over S s (0: at once)")
    p.add_argument("--gateway-module", default="gateway", help="module run as `python -m M serve ...`")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    concurrency, workers = _ints(a.concurrency), _ints(a.workers)
    if not concurrency:
        p.error("--concurrency takes positive integers, e.g. 1,16,64")
    if not workers:
        p.error("--workers takes positive integers, e.g. 1,2")
    redis = not (a.plain or a.no_redis)
    if not redis and "GATEWAY_REDIS_URL" not in os.environ and max(workers) > 1:
        print("bench: several workers need Redis; measuring 1 worker only", file=sys.stderr)
        workers = (1,)
    quick = a.quick

    def pick(value: int | float | None, full: int | float, smoke: int | float) -> int | float:
        return value if value is not None else (smoke if quick else full)

    opts = StackOptions(
        gateway_module=a.gateway_module,
        redis=redis,
        limits=not (a.plain or a.no_limits),
        cache=not (a.plain or a.no_cache),
        chunks=a.chunks,
        long_chunks=a.long_chunks,
        delay_ms=a.delay_ms,
        slow_delay_ms=float(pick(a.hold_delay_ms, 250.0, 20.0)),
        startup_timeout_s=a.startup_timeout,
    )
    plan = Plan(
        duration_s=min(a.duration, 2.0) if quick else a.duration,
        warmup_s=min(a.warmup, 1.0) if quick else a.warmup,
        max_requests=QUICK_REQUESTS if quick else UNBOUNDED,
        warmup_requests=QUICK_WARMUP_REQUESTS if quick else UNBOUNDED,
        concurrency=concurrency,
        workers=workers,
        long_concurrency=a.long_concurrency,
        memory_warmup=int(pick(a.memory_warmup, 1000, 200)),
        memory_requests=int(pick(a.memory_requests, 100_000, 2000)),
        memory_concurrency=a.memory_concurrency,
        hold_streams=int(pick(a.hold_streams, 1000, 100)),
        hold_ramp_s=max(0.0, a.hold_ramp),
    )
    return plan, opts, a.json


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the children


def main(argv: list[str] | None = None) -> int:
    plan, opts, json_path = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    fd_limit = raise_fd_limit()  # before any child starts, so they inherit it
    if fd_limit < 2 * plan.hold_streams + 256:
        print(f"bench: open-file limit {fd_limit} is low for {plan.hold_streams} streams", file=sys.stderr)
    started = time.time()
    try:
        results, store = _measure(plan, opts)
    except RuntimeError as exc:  # a child did not start
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        print("bench: interrupted", file=sys.stderr)
        return 128 + (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
    print(render(plan, opts, results, store, started))
    if json_path is not None:
        write_json(json_path, plan, opts, results)
    problems = find_problems(opts, results)
    for line in problems:
        print(f"bench: {line}", file=sys.stderr)
    if problems:
        for workers, tail in results.gateway_logs.items():
            print(f"\ngateway ×{workers} log tail:\n{tail}", file=sys.stderr)
    return 1 if problems else 0


def _measure(plan: Plan, opts: StackOptions) -> tuple[Results, str]:
    """Start the children, run every phase, stop the children whatever happens."""
    before = speed_probe()
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp, contextlib.ExitStack() as exits:
        stack = Stack(opts, Path(tmp), exits)
        store = _store_label(stack)
        print("bench: upstream up; measuring", file=sys.stderr)
        results = run_loop(Suite(plan, stack).run())
    results.speed_probe_ms = [before, speed_probe()]
    return results, store


def speed_probe() -> float:
    """Milliseconds for a fixed pure-Python loop, best of three: a shared VM's speed drifts (here by up
    to 1.6x within an hour), and this says which phase a run was measured in."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _store_label(stack: Stack) -> str:
    if not stack.has_redis:
        return "in-process store"
    if not stack.opts.redis:
        return "Redis at GATEWAY_REDIS_URL"
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5)
        version = next((w[2:] for w in out.stdout.split() if w.startswith("v=")), "?")
    except (OSError, subprocess.SubprocessError):
        version = "?"
    return f"redis-server {version} (started by the bench)"


def find_problems(opts: StackOptions, r: Results) -> list[str]:
    """Failed requests, and in cache mode any answer that was not a miss."""
    out = []
    for m in r.measurements:
        if m.errors or not m.requests:
            where = "direct" if m.workers is None else f"gateway ×{m.workers}"
            out.append(f"{m.scenario} {where}: {m.requests} ok, {m.errors} errors; first: {m.error_sample}")
        if opts.cache and m.workers is not None and set(m.cache) != {"miss"}:
            out.append(f"{m.scenario} gateway ×{m.workers}: expected only cache misses, got {m.cache}")
    for mem in r.memory:
        if mem.soak_errors:
            out.append(f"memory soak ×{mem.workers}: {mem.soak_errors} errors; first: {mem.error_sample}")
    for h in r.holds:
        if h.errors or h.completed != h.streams:
            out.append(
                f"held streams ×{h.workers}: {h.completed}/{h.streams} completed, {h.errors} errors; "
                f"first: {h.error_sample}"
            )
    for workers, counts in r.cache_metrics.items():
        if opts.cache and (counts.get("hit", 0) or not counts.get("miss", 0)):
            out.append(f"gateway ×{workers} /metrics: expected cache misses only, got {counts}")
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return rev.stdout.strip() or "unknown"


def pipeline_label(opts: StackOptions, store: str) -> str:
    parts = ["auth", "routing", "dispatch", "metrics", "access log"]
    if opts.limits:
        parts.insert(1, "admission + settlement (tenant budget, rpm, tpm)")
    if opts.cache:
        parts.insert(-2, "response cache (`mode: always`, every request a miss, then a put)")
    whole = opts.limits and opts.cache and opts.redis
    return f"{'whole pipeline' if whole else 'partial pipeline'}: {', '.join(parts)}; store: {store}"


def render(plan: Plan, opts: StackOptions, r: Results, store: str, started: float) -> str:
    today = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    elapsed_s = time.time() - started
    workers = ", ".join(map(str, plan.workers))
    impl = f"{platform.python_implementation()} {platform.python_version()}"
    kernel = f"{platform.system()} {platform.release()}"
    runs = f"{plan.warmup_s:g} s warm-up + {plan.duration_s:g} s measured per run"
    probe = "not measured"
    if len(r.speed_probe_ms) == 2:
        probe = "{:.0f} ms at the start, {:.0f} ms at the end".format(*r.speed_probe_ms)
    if plan.max_requests < UNBOUNDED:
        runs += f", at most {plan.max_requests} requests (smoke)"
    lines = [
        f"## Gateway benchmark, {today[:10]}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; {impl}; {kernel}",
        f"- gateway `{opts.gateway_module}` at `{git_revision()}`, workers: {workers}",
        f"- {pipeline_label(opts, store)}",
        f"- {runs}; streams: {opts.chunks} content chunks (and {opts.long_chunks} for the per-chunk cost)",
        f"- started {today}; the whole benchmark took {elapsed_s:.0f} s",
        f"- machine speed probe (a fixed pure-Python loop, lower is faster): {probe}",
        "",
        "### What the gateway adds: each gateway run against the direct run of the same scenario",
        "",
        overhead_table(overheads(r.measurements)),
        "",
        "### Throughput, gateway / direct",
        "",
        throughput_table(overheads(r.measurements)),
        "",
        "### Per-chunk pass-through cost (streams)",
        "",
        chunk_table(chunk_costs(plan, opts, r.measurements)),
        "",
    ]
    if r.memory:
        m0 = r.memory[0]
        soaks = "; ".join(
            f"×{m.workers} {m.soak_requests} ok, {m.soak_errors} err, {m.soak_rps:.0f} req/s"
            for m in r.memory
        )
        verdict = "PASS" if all(memory_ok(m) for m in r.memory) else "FAIL"
        lines += [
            f"### Memory: RSS per worker at start, after a {m0.warmup_requests}-request warm-up, and after "
            f"{plan.memory_requests} more requests (chat, c={plan.memory_concurrency})",
            "",
            "`at start`: once every worker runs and has answered a short probe (20 requests per worker);",
            "`warm`: the baseline; `change`: after the soak against warm.",
            "",
            memory_table(r.memory),
            "",
            f"soak: {soaks} — {verdict} (each worker within +10 % of its warm RSS)",
            "",
        ]
    if r.holds:
        opened = f"opened over {plan.hold_ramp_s:g} s" if plan.hold_ramp_s > 0 else "opened at once"
        lines += [
            f"### {plan.hold_streams} concurrent streams, {opened}, upstream pacing each chunk by "
            f"{opts.slow_delay_ms:g} ms ({opts.chunks} chunks)",
            "",
            hold_table(r.holds),
            "",
        ]
    lines += [
        "### Cache lookups (`gateway_cache_requests_total` on /metrics at the end of each gateway)",
        "",
        cache_table(r.cache_metrics),
        "",
        "### All runs",
        "",
        measurements_table(r.measurements),
        "",
        "cpu columns: CPU ms per completed request of the gateway (process tree: all workers), the",
        "redis-server, the mock upstream and this load generator; x-gateway-cache: the response header",
        "counted over the run's answers.",
    ]
    return "\n".join(lines)


def cache_table(counts: dict[int, dict[str, float]]) -> str:
    results = sorted({k for c in counts.values() for k in c} | {"hit", "miss"})
    rows = [[str(w), *(f"{c.get(k, 0):.0f}" for k in results)] for w, c in counts.items()]
    return table(["workers", *results], rows)


def chunk_costs(plan: Plan, opts: StackOptions, ms: list[Measurement]) -> list[ChunkCost]:
    c = plan.long_concurrency
    by = {(m.scenario, m.workers): m for m in ms}
    out = []
    for w in plan.workers:
        low = by.get((f"stream c={c}", w))
        high = by.get((f"stream {opts.long_chunks}ch c={c}", w))
        first, direct_first = by.get(("stream c=1", w)), by.get(("stream c=1", None))
        added = None
        if first and direct_first and first.ttfe_p50_ms is not None and direct_first.ttfe_p50_ms is not None:
            added = first.ttfe_p50_ms - direct_first.ttfe_p50_ms
        out.append(
            ChunkCost(
                workers=w,
                low_chunks=opts.chunks,
                high_chunks=opts.long_chunks,
                low_cpu_ms=low.gateway_cpu_ms if low else None,
                high_cpu_ms=high.gateway_cpu_ms if high else None,
                added_ttfe_p50_ms=added,
            )
        )
    return out


def write_json(path: Path, plan: Plan, opts: StackOptions, r: Results) -> None:
    doc = {
        "plan": asdict(plan),
        "stack": asdict(opts),
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "speed_probe_ms": r.speed_probe_ms,
        },
        "measurements": [asdict(m) for m in r.measurements],
        "overhead": [asdict(o) for o in overheads(r.measurements)],
        "memory": [asdict(m) for m in r.memory],
        "holds": [asdict(h) for h in r.holds],
        "cache_metrics": r.cache_metrics,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
