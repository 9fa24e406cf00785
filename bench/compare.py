"""Paired before/after measurement of gateway CPU per request (concurrency 1, whole pipeline).

``python -m bench.compare before=/path/to/old/checkout after=.`` starts one mock upstream, one
redis-server and one gateway per checkout (``PYTHONPATH`` set to it, so ``python -m gateway`` imports
that tree), all at once. After a warm-up it measures ``--rounds`` rounds of one ``--seconds`` run per
gateway in turn, and prints the min and median of CPU ms per request and of p50 latency per gateway
(with ``--stream``: streamed chat, and p50 time to the first event). Short alternating turns cancel
most of a shared VM's drift, which separate ``make bench`` runs do not (they differ by ±15 % here).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import Stack, StackOptions, shapes
from bench.loadgen import Load, Target, run_load
from bench.procs import cpu_seconds
from bench.suite import request_body
from bench.upstream import run_loop


async def _measure(
    target: Target, pid: int, body: bytes, seq: itertools.count[int], seconds: float, stream: bool
) -> tuple[float, float, float]:
    """One run: gateway CPU ms per request, p50 and p99 ms of the latency (or time to first event)."""
    before = cpu_seconds(pid)
    result = await run_load(target, Load(1, 10**9, seconds, stream), body, seq=seq)
    used = cpu_seconds(pid) - before
    if result.errors or not result.ok:
        raise RuntimeError(f"{result.errors} errors; first: {result.error_sample}")
    latencies = sorted(result.ttfe_ns if stream else result.latencies_ns)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return used / result.ok * 1e3, latencies[len(latencies) // 2] / 1e6, p99 / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    p.add_argument("gateways", nargs="+", help="NAME=PATH: a checkout whose gateway package to run")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--stream", action="store_true", help="streamed chat; p50 is time to first event")
    p.add_argument("--workers", type=int, default=1, help="workers per gateway (default 1)")
    a = p.parse_args(argv)
    variants = dict(g.split("=", 1) for g in a.gateways)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    seq = itertools.count(1)
    with tempfile.TemporaryDirectory(prefix="gw-compare-") as tmp, contextlib.ExitStack() as exits:
        stack = Stack(StackOptions(), Path(tmp), exits)
        body = request_body(shapes(stack.opts)["chat"].model, a.stream, f"cmp{time.time():.0f}")
        gateways = {}
        for name, path in variants.items():  # all up at once; an idle one costs the others nothing
            stack.env["PYTHONPATH"] = str(Path(path).resolve())
            stack.env["PYTHONSAFEPATH"] = "1"  # or `python -m` would import the cwd's gateway first
            gateways[name] = exits.enter_context(stack.gateway(a.workers))
        for gw in gateways.values():  # warm-up
            run_loop(run_load(gw.target(), Load(1, 1500, a.seconds, a.stream), body, seq=seq))
        for _ in range(a.rounds):
            for name, gw in gateways.items():  # short turns, alternating: the drift hits all alike
                figures[name].append(
                    run_loop(_measure(gw.target(), gw.proc.pid, body, seq, a.seconds, a.stream))
                )
    base_name, base = next(iter(figures.items()))
    for name, runs in figures.items():
        cpu, p50, p99 = (sorted(run[k] for run in runs) for k in range(3))
        line = (
            f"{name}: CPU ms/req min {cpu[0]:.3f} median {statistics.median(cpu):.3f}; "
            f"p50 ms min {p50[0]:.3f} median {statistics.median(p50):.3f}; "
            f"p99 ms median {statistics.median(p99):.3f} (n={len(runs)})"
        )
        if name != base_name:  # each round's difference to the first gateway's run next to it
            d = [statistics.median(r[k] - b[k] for r, b in zip(runs, base, strict=True)) for k in range(3)]
            line += f"; paired vs {base_name}: CPU {d[0]:+.3f}, p50 {d[1]:+.3f}, p99 {d[2]:+.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
