"""Gateway overhead benchmark: the same load DIRECT (client → upstream) and through the GATEWAY.

``python -m bench.run [--quick] [--duration S] [--json out.json]`` starts the mock upstream and the
gateway as child processes on loopback, then for each scenario (non-streaming and streaming, at
each concurrency) warms up and measures both paths, and prints what the gateway adds. See
bench/README.md for how to read the tables. Exit status: 0 ok, 1 some request failed, 2 no start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from bench.harness import MODEL, Stack, StackOptions, start_stack
from bench.loadgen import Load, Target, run_load
from bench.procs import ChildProcess, cpu_seconds
from bench.report import Measurement, measurements_table, overhead, overhead_table, summarize
from bench.upstream import run_loop

PROMPT = [{"role": "user", "content": "Say hello to the benchmark."}]
QUICK_REQUESTS, QUICK_WARMUP_REQUESTS = 60, 20
UNBOUNDED = 10_000_000  # full runs stop on their duration


@dataclass(frozen=True, slots=True)
class Settings:
    stack: StackOptions
    duration_s: float
    warmup_s: float
    max_requests: int
    warmup_requests: int
    concurrency: tuple[int, ...]
    json_path: Path | None


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Gateway overhead benchmark.")
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (a few hundred requests)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run (default 2)")
    p.add_argument("--concurrency", default="1,16", help="comma-separated connection counts (default 1,16)")
    p.add_argument("--workers", type=int, default=None, help="gateway --workers (default: its own)")
    p.add_argument("--redis", action="store_true", help="start a throwaway redis-server for the gateway")
    p.add_argument("--limits", action="store_true", help="budget and rpm/tpm on: admission + settlement")
    p.add_argument("--chunks", type=int, default=20, help="content chunks per upstream stream (default 20)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="upstream pause before each chunk (default 0)")
    p.add_argument("--gateway-module", default="gateway", help="module run as `python -m M serve ...`")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    try:
        concurrency = tuple(int(c) for c in a.concurrency.split(",") if c.strip())
    except ValueError:
        concurrency = ()
    if not concurrency or min(concurrency) < 1:
        p.error("--concurrency takes positive integers, e.g. 1,16")
    stack = StackOptions(
        gateway_module=a.gateway_module,
        workers=a.workers,
        redis=a.redis,
        limits=a.limits,
        chunks=a.chunks,
        delay_ms=a.delay_ms,
        startup_timeout_s=a.startup_timeout,
    )
    return Settings(
        stack=stack,
        duration_s=min(a.duration, 3.0) if a.quick else a.duration,
        warmup_s=min(a.warmup, 1.0) if a.quick else a.warmup,
        max_requests=QUICK_REQUESTS if a.quick else UNBOUNDED,
        warmup_requests=QUICK_WARMUP_REQUESTS if a.quick else UNBOUNDED,
        concurrency=concurrency,
        json_path=a.json,
    )


def request_body(stream: bool) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": PROMPT, "max_tokens": 32}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


class Bench:
    def __init__(self, settings: Settings, stack: Stack) -> None:
        self._settings = settings
        self._targets = {"direct": stack.direct, "gateway": stack.gateway}
        self._procs: dict[str, ChildProcess] = stack.procs

    def _cpu(self, client_first: bool) -> dict[str, float]:
        """CPU seconds used so far by each child tree and by this process (``client``).

        This process is read on the side nearest the load, so the /proc scan is not charged to it.
        """
        client = time.process_time() if client_first else 0.0
        out = {role: cpu_seconds(proc.pid) for role, proc in self._procs.items()}
        out["client"] = client if client_first else time.process_time()
        return out

    async def measure(self, scenario: str, target: Target, target_name: str, load: Load) -> Measurement:
        s = self._settings
        body = request_body(load.stream)
        if s.warmup_s > 0:
            warmup = Load(load.concurrency, s.warmup_requests, s.warmup_s, load.stream)
            await run_load(target, warmup, body)
        before = self._cpu(client_first=False)
        result = await run_load(target, load, body)
        after = self._cpu(client_first=True)
        used: dict[str, float | None] = {role: after[role] - before[role] for role in after}
        if target_name == "direct":  # the gateway and its store sit idle
            used["gateway"] = used["store"] = None
        return summarize(scenario, target_name, load.concurrency, load.stream, result, used)

    async def run_all(self) -> list[Measurement]:
        # SIGTERM cancels the run like Ctrl-C does, instead of raising inside some protocol callback
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        out: list[Measurement] = []
        s = self._settings
        for stream in (False, True):
            for concurrency in s.concurrency:
                scenario = f"{'stream' if stream else 'chat'} c={concurrency}"
                load = Load(concurrency, s.max_requests, s.duration_s, stream)
                for name, target in self._targets.items():
                    m = await self.measure(scenario, target, name, load)
                    done = f"{m.requests:>8} ok {m.errors:>3} err {m.rps:>9.0f} req/s"
                    print(f"  {scenario:<12} {name:<8} {done}", file=sys.stderr)
                    out.append(m)
        return out


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the children


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        measurements, gateway_log = _measure(settings)
    except RuntimeError as exc:  # a child did not start
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        print("bench: interrupted", file=sys.stderr)
        return 128 + (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
    report(settings, measurements)
    failed = [m for m in measurements if m.errors or not m.requests]
    for m in failed:
        print(f"\n{m.scenario} {m.target}: {m.errors} errors; first: {m.error_sample}", file=sys.stderr)
    if failed:
        print(f"\ngateway log tail:\n{gateway_log}", file=sys.stderr)
    return 1 if failed else 0


def _measure(settings: Settings) -> tuple[list[Measurement], str]:
    """Start the children, run every scenario, stop the children whatever happens."""
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp, contextlib.ExitStack() as exits:
        stack = start_stack(settings.stack, Path(tmp), exits)
        print("bench: children up; measuring", file=sys.stderr)
        measurements = run_loop(Bench(settings, stack).run_all())
        return measurements, stack.procs["gateway"].log_tail(15)


def report(settings: Settings, measurements: list[Measurement]) -> None:
    pairs: dict[str, dict[str, Measurement]] = {}
    for m in measurements:
        pairs.setdefault(m.scenario, {})[m.target] = m
    overheads = [overhead(p["direct"], p["gateway"]) for p in pairs.values() if len(p) == 2]
    opts = settings.stack
    impl = f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    gateway = f"gateway `{opts.gateway_module}`, workers {opts.workers or 'default'}"
    gateway += ", redis" if opts.redis or "GATEWAY_REDIS_URL" in os.environ else ", in-process store"
    stream = f"{opts.chunks} chunks/stream, chunk delay {opts.delay_ms:g} ms"
    print(f"\nGateway benchmark: {impl}; {settings.duration_s:g}s per run; {gateway}; {stream}\n")
    print(measurements_table(measurements))
    print("\ncpu columns: CPU ms per completed request, of the gateway (all workers), the redis-server")
    print("started by --redis, the mock upstream, and this load generator\n")
    print("What the gateway adds (gateway run vs direct run)\n")
    print(overhead_table(overheads))
    if settings.json_path is not None:
        doc = {
            "settings": json.loads(json.dumps(asdict(settings), default=str)),
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "measurements": [asdict(m) for m in measurements],
            "overhead": [asdict(o) for o in overheads],
        }
        settings.json_path.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
