"""Stage 9, settle: real usage becomes tokens and cost; metrics and one structured log line.

Costs are Decimals so the ``x-gateway-cost-usd`` header and recorded spend carry the exact
price × tokens product, not a float's approximation of it.
"""

from __future__ import annotations

import functools
import logging
import time
from decimal import Decimal

import orjson

from gateway.config.model import Price
from gateway.context import Exchange
from gateway.logs import clip, info_line
from gateway.metrics import Metrics
from gateway.providers.base import Usage

log = logging.getLogger("gateway.access")
MTOK = Decimal(1_000_000)


@functools.lru_cache(maxsize=1024)
def _rates(price: Price) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Input, cached input, cache write and output prices per Mtok as Decimals (from their decimal
    text, so 0.15 is exactly 0.15), once per price."""
    p_in = Decimal(str(price.input_per_mtok))
    p_cached = Decimal(str(price.cached_input_per_mtok)) if price.cached_input_per_mtok is not None else p_in
    p_write = Decimal(str(price.cache_write_per_mtok)) if price.cache_write_per_mtok is not None else p_in
    return p_in, p_cached, p_write, Decimal(str(price.output_per_mtok))


def cost_of(usage: Usage, price: Price) -> Decimal:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    fresh = usage.prompt_tokens - cached - written
    p_in, p_cached, p_write, p_out = _rates(price)
    total = fresh * p_in + cached * p_cached + written * p_write + usage.completion_tokens * p_out
    return total / MTOK


def format_usd(amount: Decimal) -> str:
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def price_usage(ex: Exchange) -> None:
    """Fill ``ex.cost`` from the usage the upstream reported (or that was counted)."""
    deployment = ex.attempts.deployment
    usage = ex.usage
    if usage is not None and deployment is not None and usage is not ex.priced:
        ex.cost = cost_of(usage, deployment.price)
        ex.priced = usage


def settle(ex: Exchange, metrics: Metrics) -> None:
    """Price the request, count it in the metrics, write its access log line (and span, if tracing)."""
    price_usage(ex)
    tenant, model = ex.tenant, ex.model
    metrics.child(metrics.requests, tenant, ex.route, model, str(ex.status)).inc()
    elapsed = time.perf_counter() - ex.started
    metrics.request_duration.observe(elapsed)
    if ex.attempts.count:
        metrics.upstream_duration.observe(ex.attempts.upstream_s)
        metrics.overhead.observe(max(elapsed - ex.attempts.upstream_s, 0.0))
    if ex.attempts.fallbacks:
        metrics.fallbacks.inc(ex.attempts.fallbacks)
    if ex.ttft_s is not None:
        metrics.ttft.observe(ex.ttft_s)
    if ex.usage_anomaly is not None:
        metrics.child(metrics.upstream_anomalies, ex.usage_anomaly).inc()
    usage = ex.usage
    if usage is not None:
        cached, written = usage.cached_tokens, usage.cache_write_tokens
        fresh, reused, wrote, output, cost = metrics.usage_children(tenant, model)
        # the three parts of the prompt, each priced at its own rate (cost_of)
        fresh.inc(usage.prompt_tokens - cached - written)
        reused.inc(cached)
        if written:
            wrote.inc(written)
        output.inc(usage.completion_tokens)
        cost.inc(float(ex.cost))
    if log.isEnabledFor(logging.INFO):
        info_line(log, orjson.dumps(_log_record(ex, elapsed)).decode())
    if metrics.spans is not None:
        metrics.spans.record(ex)


def _log_record(ex: Exchange, elapsed: float) -> dict[str, object]:
    """The access log line. No secrets and no prompt or answer text, unless the route opted in.
    Strings the client chose are clipped (``logs.clip``); the others come from the config."""
    usage = ex.usage
    record: dict[str, object] = {
        "request_id": ex.request_id,
        "trace": clip(ex.trace),
        "client_retry": clip(ex.client_retry),
        "endpoint": ex.endpoint,
        "tenant": ex.tenant,
        "key_id": ex.principal.key_id if ex.principal else None,
        "parent_request_id": ex.principal.parent_request_id if ex.principal else None,
        "route": ex.route,
        "model_requested": clip(ex.model_requested),
        "model": ex.model,
        "provider": ex.attempts.deployment.provider if ex.attempts.deployment else None,
        "stream": ex.stream,
        "attempts": ex.attempts.count,
        "retries": ex.attempts.retries,
        "fallbacks": ex.attempts.fallbacks,
        "cache": ex.cache,
        "input_tokens": usage.prompt_tokens if usage else None,
        "output_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "cache_write_tokens": usage.cache_write_tokens if usage else None,
        "usage_source": ex.usage_source,
        "usage_anomaly": ex.usage_anomaly,
        "cost_usd": format_usd(ex.cost),
        "status": ex.status,
        "error_code": ex.error_code,
        "latency_ms": round(elapsed * 1000, 3),
        "upstream_ms": round(ex.attempts.upstream_s * 1000, 3),
        "gateway_ms": round(max(elapsed - ex.attempts.upstream_s, 0.0) * 1000, 3),
        "ttft_ms": round(ex.ttft_s * 1000, 3) if ex.ttft_s is not None else None,
    }
    if ex.content is not None:  # only on routes with log_content, already redacted and truncated
        record.update(ex.content)
    if ex.plugins:  # plugin annotations (flat objects, by plugin name)
        record["plugins"] = ex.plugins
    if ex.memory is not None:  # the turn that summarized (or truncated) its conversation says so
        record["memory"] = ex.memory
    return record
