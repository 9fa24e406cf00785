"""Prometheus metrics, named as DESIGN.md lists them; base units, bounded labels.

Two modes, chosen by the environment when ``Metrics`` is built:

- single process (the default, and what the tests use): one ``Metrics`` per app, each on its own
  registry, so a test process can build many apps side by side; ``/metrics`` renders that registry.
- multiprocess (``PROMETHEUS_MULTIPROC_DIR`` set; ``python -m gateway serve --workers N`` sets it before
  uvicorn spawns the workers): prometheus-client keeps every value in per-process mmap files in that
  directory, and ``/metrics`` sums the files of all workers, so any worker answers a scrape with the
  totals of the whole server. The metric objects still live on a private registry: rendering it would
  show only the answering worker's share.

Gauges need a ``multiprocess_mode`` to say how the workers' values combine:
``gateway_budget_remaining_usd`` is ``mostrecent`` (the budget lives in the shared store, so the
latest value any worker read is the freshest, and it stays true after that worker exits);
``gateway_circuit_state`` is ``livemax`` (the worst state any live worker sees: a worker that sees the
circuit open is refusing that deployment; a dead worker's view no longer matters).
"""

from __future__ import annotations

import glob
import os
import re
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from gateway.pipeline.usage_check import KINDS as ANOMALY_KINDS

if TYPE_CHECKING:
    from gateway.otel import Spans

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client.multiprocess carries no annotations, hence the ``no-untyped-call`` ignores below.

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

# The files prometheus-client keeps per process for gauges in a ``live*`` mode: gauge_liveall_1234.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def mark_dead(pid: int) -> None:
    """Drop a finished worker's ``live*`` gauge files (counters stay: totals must never go back)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def reap_dead_workers(path: str) -> None:
    """Mark workers that died without a lifespan shutdown (killed, crashed) as dead.

    uvicorn's supervisor restarts such workers but offers no hook to run code for the dead one, so the
    scrape does it: any ``live*`` gauge file whose process no longer exists is dropped.
    """
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (a reused pid): leave its files alone
    return True


class Metrics:
    """Every gateway metric, created once per app."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.multiprocess_dir = multiprocess_dir()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests by outcome.", ["tenant", "route", "model", "status"], registry=r
        )
        self.tokens = Counter("gateway_tokens", "Tokens by kind.", ["tenant", "model", "kind"], registry=r)
        self.cost = Counter("gateway_cost_usd", "Spend in USD.", ["tenant", "model"], registry=r)
        self.budget_remaining = Gauge(
            "gateway_budget_remaining_usd",
            "Remaining budget this period.",
            ["tenant"],
            registry=r,
            multiprocess_mode="mostrecent",
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
            "gateway_circuit_state",
            "0 closed, 1 half-open, 2 open.",
            ["deployment"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.budget_overrun = Counter(
            "gateway_budget_overrun_usd",
            "Spend past a budget (input above estimate).",
            ["tenant"],
            registry=r,
        )
        self.upstream_anomalies = Counter(
            "gateway_upstream_anomalies",
            "Upstream usage the gateway did not trust; it counted the tokens itself.",
            ["kind"],
            registry=r,
        )
        for kind in ANOMALY_KINDS:  # exported at 0 from the start, so rate() and alerts see them
            self.upstream_anomalies.labels(kind)
        self.config_reload = Counter(
            "gateway_config_reload", "Config reloads.", ["file", "result"], registry=r
        )
        self.plugin_duration = Histogram(
            "gateway_plugin_duration_seconds",
            "One hook call to a sidecar plugin.",
            ["plugin", "hook"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.plugin_actions = Counter(
            "gateway_plugin_actions", "Hook answers by action.", ["plugin", "hook", "action"], registry=r
        )
        self.plugin_errors = Counter(
            "gateway_plugin_errors",
            "Hook calls that failed (timeout, connect, status, invalid), whatever on_error did with them.",
            ["plugin", "hook", "reason"],
            registry=r,
        )
        self.ledger_pending = Gauge(
            "gateway_ledger_pending",
            "Spend ledger rows waiting for the ledger database.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_dropped = Counter(
            "gateway_ledger_dropped", "Ledger rows dropped: the queue was full.", registry=r
        )
        self.spans: Spans | None = None
        """OpenTelemetry traces, set in lifespan when configured (gateway/otel.py); None costs nothing."""

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (labels() costs more than inc())."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def usage_children(self, tenant: str, model: str) -> tuple[Any, Any, Any, Any, Any]:
        """The input, cached, cache-write and output token counters and the cost counter of one
        (tenant, model), looked up once."""
        key = (0, (tenant, model))
        found = self._children.get(key)
        if found is None:
            tokens = self.tokens
            found = self._children[key] = (
                tokens.labels(tenant, model, "input"),
                tokens.labels(tenant, model, "cached"),
                tokens.labels(tenant, model, "cache_write"),
                tokens.labels(tenant, model, "output"),
                self.cost.labels(tenant, model),
            )
        return found

    def render(self) -> bytes:
        """The text exposition: this app's registry, or the sum over all workers in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        reap_dead_workers(self.multiprocess_dir)
        # A fresh registry per scrape, as prometheus-client documents: the collector reads the files.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
