"""Turn raw samples into figures, and figures into aligned tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.loadgen import Result


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured run: a scenario against one target (``direct`` or ``gateway``)."""

    scenario: str
    target: str
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


@dataclass(frozen=True, slots=True)
class Overhead:
    """What the gateway adds to a scenario, gateway run minus direct run."""

    scenario: str
    throughput_ratio: float | None
    added_p50_ms: float | None
    added_p99_ms: float | None
    added_ttfe_p50_ms: float | None
    added_ttfe_p99_ms: float | None
    gateway_cpu_ms: float | None


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
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def overhead(direct: Measurement, gateway: Measurement) -> Overhead:
    return Overhead(
        scenario=gateway.scenario,
        throughput_ratio=gateway.rps / direct.rps if direct.rps > 0 else None,
        added_p50_ms=_minus(gateway.p50_ms, direct.p50_ms),
        added_p99_ms=_minus(gateway.p99_ms, direct.p99_ms),
        added_ttfe_p50_ms=_minus(gateway.ttfe_p50_ms, direct.ttfe_p50_ms),
        added_ttfe_p99_ms=_minus(gateway.ttfe_p99_ms, direct.ttfe_p99_ms),
        gateway_cpu_ms=gateway.gateway_cpu_ms,
    )


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Aligned plain-text table; the first ``left`` columns are left-aligned, the rest right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def measurements_table(rows: Sequence[Measurement]) -> str:
    headers = ["scenario", "target", "ok", "err", "req/s", "p50 ms", "p99 ms", "ttfe p50", "ttfe p99"]
    headers += ["gw cpu", "store cpu", "up cpu", "cli cpu"]
    body = [
        [
            m.scenario,
            m.target,
            _fmt(m.requests),
            _fmt(m.errors),
            _fmt(m.rps, 0),
            _fmt(m.p50_ms, 3),
            _fmt(m.p99_ms, 3),
            _fmt(m.ttfe_p50_ms, 3),
            _fmt(m.ttfe_p99_ms, 3),
            _fmt(m.gateway_cpu_ms, 3),
            _fmt(m.store_cpu_ms, 3),
            _fmt(m.upstream_cpu_ms, 3),
            _fmt(m.client_cpu_ms, 3),
        ]
        for m in rows
    ]
    return table(headers, body, left=2)


def overhead_table(rows: Sequence[Overhead]) -> str:
    headers = ["scenario", "throughput gw/direct", "+p50 ms", "+p99 ms", "+ttfe p50 ms", "+ttfe p99 ms"]
    headers.append("gw cpu ms/req")
    body = [
        [
            o.scenario,
            _fmt(o.throughput_ratio, 3),
            _fmt(o.added_p50_ms, 3),
            _fmt(o.added_p99_ms, 3),
            _fmt(o.added_ttfe_p50_ms, 3),
            _fmt(o.added_ttfe_p99_ms, 3),
            _fmt(o.gateway_cpu_ms, 3),
        ]
        for o in rows
    ]
    return table(headers, body)
