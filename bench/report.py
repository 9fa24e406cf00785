"""Turn raw samples into figures, and figures into markdown tables that paste into RESULTS.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.loadgen import Result


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured run: a scenario against one target (``direct``, or a gateway with N workers)."""

    scenario: str
    target: str
    workers: int | None
    concurrency: int
    stream: bool
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    ttfe_p50_ms: float | None
    ttfe_p99_ms: float | None
    gateway_cpu_ms: float | None
    store_cpu_ms: float | None
    upstream_cpu_ms: float | None
    client_cpu_ms: float | None
    error_sample: str | None = None
    cache: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Overhead:
    """What the gateway adds to a scenario, gateway run minus direct run."""

    scenario: str
    workers: int | None
    direct_rps: float
    gateway_rps: float
    throughput_ratio: float | None
    added_p50_ms: float | None
    added_p99_ms: float | None
    added_ttfe_p50_ms: float | None
    added_ttfe_p99_ms: float | None
    gateway_cpu_ms: float | None


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of each gateway worker (KiB, by pid) at three points, and the load in between."""

    workers: int
    warmup_requests: int
    soak_requests: int
    soak_errors: int
    soak_rps: float
    started_kib: dict[int, int | None]
    warm_kib: dict[int, int | None]
    after_kib: dict[int, int | None]
    error_sample: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Many streams opened at once and held open by a slow upstream."""

    workers: int
    streams: int
    completed: int
    errors: int
    elapsed_s: float
    ttfe_p50_ms: float | None
    ttfe_p99_ms: float | None
    peak_total_kib: int
    peak_worker_kib: int
    error_sample: str | None = None


MEMORY_TOLERANCE = 0.10
"""RSS after the soak may exceed the warm baseline by at most this fraction."""


def percentile_ms(samples_ns: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile of ``samples_ns`` (sorted), in milliseconds."""
    if not samples_ns:
        return None
    rank = max(1, math.ceil(q * len(samples_ns)))
    return samples_ns[rank - 1] / 1e6


def _per_request_ms(cpu_s: float | None, requests: int) -> float | None:
    if cpu_s is None or requests == 0:
        return None
    return cpu_s * 1000 / requests


def summarize(
    scenario: str,
    target: str,
    workers: int | None,
    concurrency: int,
    stream: bool,
    result: Result,
    cpu_s: dict[str, float | None],
) -> Measurement:
    """Figures of one run; ``cpu_s``: CPU seconds used in it by gateway, store, upstream and client."""
    lat = sorted(result.latencies_ns)
    ttfe = sorted(result.ttfe_ns)
    n = result.ok
    return Measurement(
        scenario=scenario,
        target=target,
        workers=workers,
        concurrency=concurrency,
        stream=stream,
        requests=n,
        errors=result.errors,
        elapsed_s=result.elapsed_s,
        rps=n / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        p50_ms=percentile_ms(lat, 0.50),
        p99_ms=percentile_ms(lat, 0.99),
        ttfe_p50_ms=percentile_ms(ttfe, 0.50) if stream else None,
        ttfe_p99_ms=percentile_ms(ttfe, 0.99) if stream else None,
        gateway_cpu_ms=_per_request_ms(cpu_s.get("gateway"), n),
        store_cpu_ms=_per_request_ms(cpu_s.get("store"), n),
        upstream_cpu_ms=_per_request_ms(cpu_s.get("upstream"), n),
        client_cpu_ms=_per_request_ms(cpu_s.get("client"), n),
        error_sample=result.error_sample,
        cache=dict(result.cache),
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def overhead(direct: Measurement, gateway: Measurement) -> Overhead:
    return Overhead(
        scenario=gateway.scenario,
        workers=gateway.workers,
        direct_rps=direct.rps,
        gateway_rps=gateway.rps,
        throughput_ratio=gateway.rps / direct.rps if direct.rps > 0 else None,
        added_p50_ms=_minus(gateway.p50_ms, direct.p50_ms),
        added_p99_ms=_minus(gateway.p99_ms, direct.p99_ms),
        added_ttfe_p50_ms=_minus(gateway.ttfe_p50_ms, direct.ttfe_p50_ms),
        added_ttfe_p99_ms=_minus(gateway.ttfe_p99_ms, direct.ttfe_p99_ms),
        gateway_cpu_ms=gateway.gateway_cpu_ms,
    )


def overheads(measurements: Sequence[Measurement]) -> list[Overhead]:
    """Each gateway run against the direct run of its scenario."""
    direct = {m.scenario: m for m in measurements if m.workers is None}
    return [
        overhead(direct[m.scenario], m)
        for m in measurements
        if m.workers is not None and m.scenario in direct
    ]


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table, padded so it also reads as plain text; the first ``left`` columns left-aligned."""
    widths = [max([len(h), 3, *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":" if i >= left else "-" * (w + 2)) for i, w in enumerate(widths))
    return "\n".join([line(headers), rule + "|", *(line(r) for r in rows)])


def _cache_cell(cache: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(cache.items())) or "-"


def _target(m: Measurement) -> str:
    return m.target if m.workers is None else f"gateway ×{m.workers}"


def measurements_table(rows: Sequence[Measurement]) -> str:
    headers = ["scenario", "target", "ok", "err", "req/s", "p50 ms", "p99 ms", "ttfe p50", "ttfe p99"]
    headers += ["gw cpu", "store cpu", "up cpu", "cli cpu", "x-gateway-cache"]
    body = [
        [
            m.scenario,
            _target(m),
            fmt(m.requests),
            fmt(m.errors),
            fmt(m.rps, 0),
            fmt(m.p50_ms, 3),
            fmt(m.p99_ms, 3),
            fmt(m.ttfe_p50_ms, 3),
            fmt(m.ttfe_p99_ms, 3),
            fmt(m.gateway_cpu_ms, 3),
            fmt(m.store_cpu_ms, 3),
            fmt(m.upstream_cpu_ms, 3),
            fmt(m.client_cpu_ms, 3),
            _cache_cell(m.cache) if m.workers is not None else "-",
        ]
        for m in rows
    ]
    return table(headers, body, left=2)


def overhead_table(rows: Sequence[Overhead]) -> str:
    headers = ["scenario", "workers", "direct req/s", "gw req/s", "gw/direct", "+p50 ms", "+p99 ms"]
    headers += ["+ttfe p50 ms", "+ttfe p99 ms", "gw cpu ms/req"]
    body = [
        [
            o.scenario,
            fmt(o.workers),
            fmt(o.direct_rps, 0),
            fmt(o.gateway_rps, 0),
            fmt(o.throughput_ratio, 3),
            fmt(o.added_p50_ms, 3),
            fmt(o.added_p99_ms, 3),
            fmt(o.added_ttfe_p50_ms, 3),
            fmt(o.added_ttfe_p99_ms, 3),
            fmt(o.gateway_cpu_ms, 3),
        ]
        for o in rows
    ]
    return table(headers, body, left=2)


def throughput_table(rows: Sequence[Overhead]) -> str:
    """Scenarios down, worker counts across: gateway req/s and its ratio to the direct run."""
    workers = sorted({o.workers for o in rows if o.workers is not None})
    by_key = {(o.scenario, o.workers): o for o in rows}
    scenarios = list(dict.fromkeys(o.scenario for o in rows))
    headers = ["scenario", "direct req/s"]
    for w in workers:
        headers += [f"×{w} req/s", f"×{w} / direct"]
    body = []
    for s in scenarios:
        first = next(o for o in rows if o.scenario == s)
        row = [s, fmt(first.direct_rps, 0)]
        for w in workers:
            o = by_key.get((s, w))
            row += [fmt(o.gateway_rps, 0), fmt(o.throughput_ratio, 3)] if o else ["-", "-"]
        body.append(row)
    return table(headers, body)


@dataclass(frozen=True, slots=True)
class ChunkCost:
    workers: int
    low_chunks: int
    high_chunks: int
    low_cpu_ms: float | None
    high_cpu_ms: float | None
    added_ttfe_p50_ms: float | None

    @property
    def per_chunk_us(self) -> float | None:
        if self.low_cpu_ms is None or self.high_cpu_ms is None or self.high_chunks == self.low_chunks:
            return None
        return (self.high_cpu_ms - self.low_cpu_ms) * 1000 / (self.high_chunks - self.low_chunks)


def chunk_table(rows: Sequence[ChunkCost]) -> str:
    headers = ["workers", "gw cpu ms/stream, low", "gw cpu ms/stream, high", "gw cpu µs/chunk"]
    headers.append("+ttfe p50 ms (c=1)")
    body = [
        [
            f"{c.workers} ({c.low_chunks} vs {c.high_chunks} chunks)",
            fmt(c.low_cpu_ms, 3),
            fmt(c.high_cpu_ms, 3),
            fmt(c.per_chunk_us, 1),
            fmt(c.added_ttfe_p50_ms, 3),
        ]
        for c in rows
    ]
    return table(headers, body)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def memory_growth(m: Memory, pid: int) -> float | None:
    warm, after = m.warm_kib.get(pid), m.after_kib.get(pid)
    if not warm or after is None:
        return None
    return (after - warm) / warm


def memory_ok(m: Memory) -> bool:
    growth = [memory_growth(m, pid) for pid in m.warm_kib]
    return all(g is not None and g <= MEMORY_TOLERANCE for g in growth)


def memory_table(rows: Sequence[Memory]) -> str:
    headers = ["workers", "worker pid", "RSS MiB at start", "RSS MiB warm", "RSS MiB after soak", "change"]
    headers += ["verdict (≤ +10 %)"]
    body = []
    for m in rows:
        for pid in m.warm_kib:
            growth = memory_growth(m, pid)
            ok = growth is not None and growth <= MEMORY_TOLERANCE
            body.append(
                [
                    fmt(m.workers),
                    str(pid),
                    _mib(m.started_kib.get(pid)),
                    _mib(m.warm_kib.get(pid)),
                    _mib(m.after_kib.get(pid)),
                    "-" if growth is None else f"{growth * 100:+.1f} %",
                    "PASS" if ok else "FAIL",
                ]
            )
    return table(headers, body, left=2)


def hold_table(rows: Sequence[Hold]) -> str:
    headers = ["workers", "streams", "done with [DONE]", "errors", "time s", "ttfe p50 ms", "ttfe p99 ms"]
    headers += ["peak RSS MiB, all workers", "peak RSS MiB, one worker"]
    body = [
        [
            fmt(h.workers),
            fmt(h.streams),
            fmt(h.completed),
            fmt(h.errors),
            fmt(h.elapsed_s, 1),
            fmt(h.ttfe_p50_ms, 1),
            fmt(h.ttfe_p99_ms, 1),
            _mib(h.peak_total_kib),
            _mib(h.peak_worker_kib),
        ]
        for h in rows
    ]
    return table(headers, body)
