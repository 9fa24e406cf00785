"""What a pre hook to a sidecar on loopback adds to a request (issue 14's speed point).

``python -m bench.plugins`` starts the bench stack (mock upstream, redis-server, one gateway worker) and
a minimal hook sidecar (``bench.hook_sidecar``), and routes two models to the same deployment: one
plain, one through a route with a ``pre`` hook (``--hooks pre,post`` adds a post hook too). After a
warm-up it measures ``--rounds`` alternating one-``--seconds`` runs of each at concurrency 1 and prints,
per path, the median p50 latency and gateway CPU per request, and the paired difference (hooked minus
plain, round by round). The sidecar's own CPU per hooked request is printed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import HOST, Stack, StackOptions, shapes
from bench.loadgen import Load, Target, run_load
from bench.procs import ChildProcess, cpu_seconds, free_port, python_module
from bench.suite import request_body
from bench.upstream import run_loop

HOOKED_MODEL = "bench-model-hooked"


def _add_hooked_route(routes: Path, sidecar_port: int, hooks: str) -> None:
    text = routes.read_text()
    text = text.replace(
        "models:\n",
        "models:\n  bench-model-hooked: {provider: up-chat, upstream: bench-model,"
        " price: {input_per_mtok: 0.15, output_per_mtok: 0.6}}\n",
        1,
    )
    text += (
        f"  - name: bench-hooked\n    match: {{model: {HOOKED_MODEL}}}\n"
        f"    targets: [{{model: {HOOKED_MODEL}}}]\n    plugins: [benchhook]\n"
        f"plugins:\n  benchhook: {{url: 'http://{HOST}:{sidecar_port}', hooks: [{hooks}],"
        " timeout_s: 1.0, on_error: closed, token: bench-plugin-token}\n"
    )
    routes.write_text(text)


async def _measure(
    target: Target, pids: tuple[int, int], body: bytes, seq: itertools.count[int], seconds: float
) -> tuple[float, float, float, float]:
    """One run: gateway CPU ms/req, p50 and p99 latency ms, sidecar CPU ms/req."""
    before = [cpu_seconds(pid) for pid in pids]
    result = await run_load(target, Load(1, 10**9, seconds, False), body, seq=seq)
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    if result.errors or not result.ok:
        raise RuntimeError(f"{result.errors} errors; first: {result.error_sample}")
    latencies = sorted(result.latencies_ns)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    n = result.ok
    return used[0] / n * 1e3, latencies[n // 2] / 1e6, p99 / 1e6, used[1] / n * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plugins", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--hooks", default="pre", help="the hooks the sidecar serves: pre (default) or pre,post")
    a = p.parse_args(argv)
    seq = itertools.count(1)
    nonce = f"plg{time.time():.0f}"
    with tempfile.TemporaryDirectory(prefix="gw-plugins-") as tmp, contextlib.ExitStack() as exits:
        stack = Stack(StackOptions(cache=False), Path(tmp), exits)
        sidecar_port = free_port()
        argv_sidecar = python_module("bench.hook_sidecar", "--host", HOST, "--port", str(sidecar_port))
        sidecar = exits.enter_context(
            ChildProcess("sidecar", argv_sidecar, Path(tmp) / "sidecar.log", Path.cwd(), stack.env)
        )
        sidecar.wait_healthy(sidecar_port, 10.0)
        _add_hooked_route(stack.routes, sidecar_port, a.hooks.replace(",", ", "))
        # Redis is shared: the gateway is not alone, so the delegation secret comes from the environment.
        stack.env["GATEWAY_DELEGATION_SECRET"] = "bench-delegation-secret-" + "x" * 24
        gw = exits.enter_context(stack.gateway(1))
        bodies = {
            "plain": request_body(shapes(stack.opts)["chat"].model, False, nonce),
            "hooked": request_body(HOOKED_MODEL, False, nonce),
        }
        target = gw.target()
        for body in bodies.values():  # warm-up
            run_loop(run_load(target, Load(1, 1500, a.seconds, False), body, seq=seq))
        figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in bodies}
        pids = (gw.proc.pid, sidecar.pid)
        for _ in range(a.rounds):
            for name, body in bodies.items():  # alternating short turns: drift hits both alike
                figures[name].append(run_loop(_measure(target, pids, body, seq, a.seconds)))
    plain = figures["plain"]
    print(f"# bench.plugins: hooks [{a.hooks}] to a loopback sidecar, 1 worker, c=1, {a.rounds} rounds")
    for name, runs in figures.items():
        cpu = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        print(
            f"{name}: gateway CPU ms/req median {cpu:.3f}; p50 ms median {p50:.3f}; p99 ms median {p99:.3f}"
        )
    diffs = [
        statistics.median(h[k] - b[k] for h, b in zip(figures["hooked"], plain, strict=True))
        for k in range(3)
    ]
    print(
        f"added by the hook (paired median): p50 {diffs[1]:+.3f} ms, p99 {diffs[2]:+.3f} ms, "
        f"gateway CPU {diffs[0]:+.3f} ms/req"
    )
    sidecar_cpu = statistics.median(r[3] for r in figures["hooked"])
    print(f"sidecar CPU ms per hooked request (raw asyncio, not the gateway's): {sidecar_cpu:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
