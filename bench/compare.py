"""Paired before/after measurement of gateway CPU per request (chat, concurrency 1, whole pipeline).

``python -m bench.compare before=/path/to/old/checkout after=.`` starts one mock upstream and one
redis-server, then starts each gateway in turn (``PYTHONPATH`` set to its checkout, so ``python -m
gateway`` imports that tree), warms it up and measures ``--runs`` runs of ``--seconds`` each, for
``--rounds`` rounds. Prints the min and median of CPU ms per request and of p50 latency per gateway.
Alternating the gateways in one session cancels most of a shared VM's drift, which separate
``make bench`` runs do not (they differ by ±15 % here).
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
    target: Target, pid: int, body: bytes, seq: itertools.count[int], runs: int, seconds: float
) -> list[tuple[float, float]]:
    await run_load(target, Load(1, 1500, seconds, False), body, seq=seq)  # warm-up
    out = []
    for _ in range(runs):
        before = cpu_seconds(pid)
        result = await run_load(target, Load(1, 10**9, seconds, False), body, seq=seq)
        used = cpu_seconds(pid) - before
        if result.errors or not result.ok:
            raise RuntimeError(f"{result.errors} errors; first: {result.error_sample}")
        latencies = sorted(result.latencies_ns)
        out.append((used / result.ok * 1e3, latencies[len(latencies) // 2] / 1e6))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    p.add_argument("gateways", nargs="+", help="NAME=PATH: a checkout whose gateway package to run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    variants = dict(g.split("=", 1) for g in a.gateways)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    seq = itertools.count(1)
    with tempfile.TemporaryDirectory(prefix="gw-compare-") as tmp, contextlib.ExitStack() as exits:
        stack = Stack(StackOptions(), Path(tmp), exits)
        body = request_body(shapes(stack.opts)["chat"].model, False, f"cmp{time.time():.0f}")
        for _ in range(a.rounds):
            for name, path in variants.items():
                stack.env["PYTHONPATH"] = str(Path(path).resolve())
                with stack.gateway(1) as gw:
                    figures[name] += run_loop(
                        _measure(gw.target(), gw.proc.pid, body, seq, a.runs, a.seconds)
                    )
    for name, pairs in figures.items():
        cpu, p50 = sorted(c for c, _ in pairs), sorted(q for _, q in pairs)
        print(
            f"{name}: CPU ms/req min {cpu[0]:.3f} median {statistics.median(cpu):.3f}; "
            f"p50 ms min {p50[0]:.3f} median {statistics.median(p50):.3f} (n={len(pairs)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
