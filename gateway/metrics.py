"""Prometheus metrics, named as DESIGN.md lists them; base units, bounded labels.

One ``Metrics`` per app, on its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests by outcome.", ["tenant", "route", "model", "status"], registry=r
        )
        self.tokens = Counter("gateway_tokens", "Tokens by kind.", ["tenant", "model", "kind"], registry=r)
        self.cost = Counter("gateway_cost_usd", "Spend in USD.", ["tenant", "model"], registry=r)
        self.budget_remaining = Gauge(
            "gateway_budget_remaining_usd", "Remaining budget this period.", ["tenant"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Whole request.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds", "Upstream time.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time to first streamed chunk.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter("gateway_cache_requests", "Cache lookups.", ["result"], registry=r)
        self.retries = Counter("gateway_retries", "Upstream retries.", registry=r)
        self.fallbacks = Counter("gateway_fallbacks", "Moves to the next candidate.", registry=r)
        self.circuit_state = Gauge(
            "gateway_circuit_state", "0 closed, 1 half-open, 2 open.", ["deployment"], registry=r
        )
        self.budget_overrun = Counter(
            "gateway_budget_overrun_usd",
            "Spend past a budget (input above estimate).",
            ["tenant"],
            registry=r,
        )
        self.config_reload = Counter(
            "gateway_config_reload", "Config reloads.", ["file", "result"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
