"""The sidecar's Prometheus metrics, served at ``GET /metrics`` (behind the plugin token, like every
path but ``/healthz``: scrape with ``authorization: Bearer <REVIEW_TOKEN>``).

``gateway_review_queue_depth{tenant}`` is read from the queue at each scrape, so every replica reports
the shared depth (take ``max`` across replicas, not ``sum``). The counters and the histogram count what
this replica did (``sum`` across replicas): items held, decisions and their time from hold to decision.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DECISION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class ReviewMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.depth = Gauge(
            "gateway_review_queue_depth",
            "Items waiting for a reviewer, per tenant (the shared queue's depth).",
            ["tenant"],
            registry=self.registry,
        )
        self.held_total = Counter(
            "gateway_review_held",
            "Answers and tool calls this replica put in the queue.",
            ["route", "kind", "hold"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "gateway_review_outcomes",
            "Decisions by route and outcome (approved, edited, rejected, released, timed_out).",
            ["route", "kind", "outcome"],
            registry=self.registry,
        )
        self.time_to_decision = Histogram(
            "gateway_review_time_to_decision_seconds",
            "From the moment an item was held to its decision (a reviewer's or the timeout's).",
            ["kind"],
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )

    def held(self, item: dict[str, Any]) -> None:
        self.held_total.labels(item["route"], item["kind"], item["hold"]).inc()

    def decided(self, item: dict[str, Any], outcome: str, at: float | None = None) -> None:
        self.outcomes.labels(item["route"], item["kind"], outcome).inc()
        decided_at = time.time() if at is None else at
        self.time_to_decision.labels(item["kind"]).observe(max(decided_at - item["created"], 0.0))

    def render(self, depth: dict[str, int]) -> bytes:
        self.depth.clear()  # a tenant whose queue emptied has no key left to find
        for tenant, n in depth.items():
            self.depth.labels(tenant).set(n)
        return generate_latest(self.registry)
