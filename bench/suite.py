"""The benchmark's phases: direct runs, then per gateway worker count memory, scenarios and held streams.

Every phase is driven from one event loop in this process; children are the mock upstream, the
redis-server and one gateway at a time (see harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field

from bench.harness import HOST, Gateway, Shape, Stack, shapes
from bench.loadgen import SEQ_MARK, Load, Target, run_load
from bench.procs import cpu_seconds, rss_kib, worker_pids
from bench.report import Hold, Measurement, Memory, percentile_ms, summarize

UNBOUNDED = 10_000_000  # runs limited by their duration
CACHE_METRIC = "gateway_cache_requests_total"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run; durations in seconds, counts in requests."""

    duration_s: float
    warmup_s: float
    max_requests: int
    warmup_requests: int
    concurrency: tuple[int, ...]
    workers: tuple[int, ...]
    long_concurrency: int
    memory_warmup: int
    memory_requests: int
    memory_concurrency: int
    hold_streams: int
    hold_ramp_s: float = 0.0
    """0: the held streams' connections are all opened at once."""
    hold_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    shape: str
    stream: bool
    concurrency: int


@dataclass(slots=True)
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    cache_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    """``gateway_cache_requests_total`` by result, scraped from each gateway's /metrics at its end."""
    gateway_logs: dict[int, str] = field(default_factory=dict)
    speed_probe_ms: list[float] = field(default_factory=list)
    """``speed_probe`` at the start and at the end of the benchmark: how fast the machine was."""


def scenarios(plan: Plan, long_chunks: int) -> list[Scenario]:
    out = [Scenario(f"chat c={c}", "chat", False, c) for c in plan.concurrency]
    out += [Scenario(f"stream c={c}", "chat", True, c) for c in plan.concurrency]
    c = plan.long_concurrency
    out.append(Scenario(f"stream {long_chunks}ch c={c}", "long", True, c))
    return out


def request_body(model: str, stream: bool, nonce: str) -> bytes:
    """A chat request whose prompt holds ``SEQ_MARK``, so the load generator can make each one unique."""
    prompt = f"Say hello to the benchmark. Run {nonce}, request {SEQ_MARK.decode()}."
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


class Suite:
    def __init__(self, plan: Plan, stack: Stack) -> None:
        self._plan = plan
        self._stack = stack
        self._shapes = shapes(stack.opts)
        self._seq = itertools.count()  # shared by every run: no two requests of the benchmark are alike
        self._nonce = secrets.token_hex(4)  # nor like those of an earlier benchmark on the same Redis
        self.results = Results()

    def _log(self, line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    async def run(self) -> Results:
        # SIGTERM cancels the run like Ctrl-C does, instead of raising inside some protocol callback
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        plan = self._plan
        todo = scenarios(plan, self._stack.opts.long_chunks)
        for sc in todo:
            await self._measure(sc, self._stack.direct(self._shapes[sc.shape]), None)
        for workers in plan.workers:
            self._log(f"starting the gateway with {workers} worker(s)")
            with self._stack.gateway(workers) as gw:
                await self._wait_for_workers(gw)
                if plan.memory_requests > 0:
                    await self._memory(gw)
                for sc in todo:
                    await self._measure(sc, gw.target(), workers)
                if plan.hold_streams > 0:
                    await self._hold(gw)
                self.results.cache_metrics[workers] = scrape_counter(gw.port, CACHE_METRIC, "result")
                self.results.gateway_logs[workers] = gw.proc.log_tail(15)
        return self.results

    def _body(self, shape: Shape, stream: bool) -> bytes:
        return request_body(shape.model, stream, self._nonce)

    def _cpu(self, client_first: bool) -> dict[str, float]:
        """CPU seconds used so far by each child tree and by this process (``client``).

        This process is read on the side nearest the load, so the /proc scan is not charged to it.
        """
        client = time.process_time() if client_first else 0.0
        out = {role: cpu_seconds(proc.pid) for role, proc in self._stack.procs.items()}
        out["client"] = client if client_first else time.process_time()
        return out

    async def _measure(self, sc: Scenario, target: Target, workers: int | None) -> None:
        plan = self._plan
        body = self._body(self._shapes[sc.shape], sc.stream)
        if plan.warmup_s > 0:
            warmup = Load(sc.concurrency, plan.warmup_requests, plan.warmup_s, sc.stream)
            await run_load(target, warmup, body, seq=self._seq)
        load = Load(sc.concurrency, plan.max_requests, plan.duration_s, sc.stream)
        before = self._cpu(client_first=False)
        result = await run_load(target, load, body, seq=self._seq)
        after = self._cpu(client_first=True)
        used: dict[str, float | None] = {role: after[role] - before[role] for role in after}
        if workers is None:  # the gateway and its store sit idle
            used["gateway"] = used["store"] = None
        name = "direct" if workers is None else "gateway"
        m = summarize(sc.name, name, workers, sc.concurrency, sc.stream, result, used)
        self.results.measurements.append(m)
        label = name if workers is None else f"gateway×{workers}"
        done = f"{m.requests:>8} ok {m.errors:>3} err {m.rps:>9.0f} req/s"
        self._log(f"{sc.name:<20} {label:<10} {done}")

    async def _wait_for_workers(self, gw: Gateway, timeout_s: float = 30.0) -> None:
        """Until every worker runs and answers (/healthz is up as soon as the first one does)."""
        for _ in range(int(timeout_s * 10)):
            if len(worker_pids(gw.proc.pid)) >= gw.workers:
                break
            await asyncio.sleep(0.1)
        probe = Load(gw.workers * 4, gw.workers * 20, 10.0, stream=False)
        await run_load(gw.target(), probe, self._body(self._shapes["chat"], False), seq=self._seq)
        await asyncio.sleep(0.5)

    async def _memory(self, gw: Gateway) -> None:
        plan = self._plan
        pids = worker_pids(gw.proc.pid)
        started = {pid: rss_kib(pid) for pid in pids}
        body = self._body(self._shapes["chat"], False)
        c = plan.memory_concurrency
        await run_load(gw.target(), Load(c, plan.memory_warmup, 600.0, False), body, seq=self._seq)
        warm = {pid: rss_kib(pid) for pid in pids}
        self._log(f"memory: {plan.memory_requests} requests at c={c} through gateway×{gw.workers}")
        soak = Load(c, plan.memory_requests, 3600.0, False)
        result = await run_load(gw.target(), soak, body, seq=self._seq)
        after = {pid: rss_kib(pid) for pid in pids}
        rps = result.ok / result.elapsed_s if result.elapsed_s > 0 else 0.0
        self.results.memory.append(
            Memory(
                workers=gw.workers,
                warmup_requests=plan.memory_warmup,
                soak_requests=result.ok,
                soak_errors=result.errors,
                soak_rps=rps,
                started_kib=started,
                warm_kib=warm,
                after_kib=after,
                error_sample=result.error_sample,
            )
        )
        self._log(f"memory: {result.ok} ok {result.errors} err {rps:.0f} req/s; cache {result.cache}")

    async def _hold(self, gw: Gateway) -> None:
        """Open ``hold_streams`` slow streams at once and hold each until its ``[DONE]``."""
        plan = self._plan
        n = plan.hold_streams
        self._log(f"holding {n} concurrent streams through gateway×{gw.workers}")
        sampler = RssSampler(worker_pids(gw.proc.pid))
        sampling = asyncio.ensure_future(sampler.run())
        body = self._body(self._shapes["slow"], True)
        load = Load(n, n, 5.0, stream=True, ramp_s=plan.hold_ramp_s)
        try:
            result = await run_load(gw.target(), load, body, grace_s=plan.hold_timeout_s, seq=self._seq)
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        ttfe = sorted(result.ttfe_ns)
        hold = Hold(
            workers=gw.workers,
            streams=n,
            completed=result.ok,
            errors=result.errors,
            elapsed_s=result.elapsed_s,
            ttfe_p50_ms=percentile_ms(ttfe, 0.50),
            ttfe_p99_ms=percentile_ms(ttfe, 0.99),
            peak_total_kib=sampler.peak_total,
            peak_worker_kib=sampler.peak_worker,
            error_sample=result.error_sample,
        )
        self.results.holds.append(hold)
        self._log(f"held: {result.ok}/{n} done, {result.errors} err in {result.elapsed_s:.1f}s")


class RssSampler:
    """The peak RSS of a set of processes, summed and per process, sampled every ``interval_s``."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self.peak_total = 0
        self.peak_worker = 0

    def sample(self) -> None:
        sizes = [rss_kib(pid) or 0 for pid in self._pids]
        self.peak_total = max(self.peak_total, sum(sizes))
        self.peak_worker = max(self.peak_worker, *sizes)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval_s)


def scrape_counter(port: int, name: str, label: str) -> dict[str, float]:
    """A counter's samples on a /metrics page, by the value of one label."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    finally:
        conn.close()
    out: dict[str, float] = {}
    sample = re.compile(rf"^{re.escape(name)}{{([^}}]*)}} (\S+)", re.MULTILINE)
    for labels, value in sample.findall(text):
        found = re.search(rf'(?:^|,){re.escape(label)}="([^"]*)"', labels)
        if found:
            out[found[1]] = out.get(found[1], 0.0) + float(value)
    return out
