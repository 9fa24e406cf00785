"""OpenTelemetry traces (the optional ``otel`` extra): one span per request, GenAI semantic conventions.

On only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``GATEWAY_OTEL=1``) is set and the packages import;
otherwise ``from_env`` returns None, nothing from opentelemetry is imported, and settlement pays one
``is None`` check. The exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables itself.

The span is built at settlement from what the Exchange recorded, with its start back-dated to when
the request arrived, so the hot path never touches a tracer. A gateway is the client of its upstream,
hence ``SpanKind.CLIENT``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import orjson

from gateway.config.model import ProviderConfig
from gateway.context import Exchange, Traced

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("gateway")

ProviderTypes = Callable[[], Mapping[str, ProviderConfig]]
"""The current config's providers (read per span: a reload may change them)."""

# gen_ai.operation.name by endpoint; Anthropic's /v1/messages is a chat too.
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class Spans:
    """Turns settled Exchanges into spans on its own TracerProvider (the global one is left alone)."""

    def __init__(self, provider: TracerProvider, provider_types: ProviderTypes) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("gateway")
        self._provider_types = provider_types

    def record(self, ex: Exchange) -> None:
        """Emit the request's span; called once per request from settlement."""
        try:
            self._record(ex)
        except Exception:  # tracing must never cost a settlement (spend, the reservation) its run
            log.exception("span for %s not recorded", ex.request_id)

    def _record(self, ex: Exchange) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end = time.time_ns()
        start = end - int((time.perf_counter() - ex.started) * 1e9)
        operation = _OPERATIONS.get(ex.endpoint, "chat")
        requested = ex.model_requested or "unknown"
        attributes: dict[str, str | int | tuple[str, ...]] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": requested,
            "gateway.request_id": ex.request_id,
            "gateway.tenant": ex.tenant,
            "gateway.route": ex.route,
            "gateway.cache": ex.cache,
            "gateway.attempts": ex.attempts.count,
            "http.response.status_code": ex.status,
        }
        deployment = ex.attempts.deployment
        if deployment is not None:
            config = self._provider_types().get(deployment.provider)
            attributes["gen_ai.provider.name"] = config.type if config else deployment.provider
            attributes["gen_ai.response.model"] = deployment.upstream
        if ex.usage is not None:
            # input includes cached tokens, as the conventions (and OpenAI's prompt_tokens) count them
            attributes["gen_ai.usage.input_tokens"] = ex.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = ex.usage.completion_tokens
        failed = ex.status >= 400
        if failed:
            attributes["error.type"] = ex.error_code or str(ex.status)
        traced = ex.traced
        if traced is not None and traced.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = traced.finish_reasons
        span = self._tracer.start_span(
            f"{operation} {requested}",
            context=_parent(traced),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start,
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is still batched (graceful shutdown)."""
        self._provider.shutdown()


def _parent(traced: Traced | None) -> Context | None:
    """The caller's span from its ``traceparent`` (W3C Trace Context); None (a root span) without one or
    when it is malformed, which the propagator ignores as the spec says."""
    if traced is None or not traced.traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traced.traceparent}
    if traced.tracestate:
        carrier["tracestate"] = traced.tracestate
    return TraceContextTextMapPropagator().extract(carrier)


def finish_reasons(body: bytes) -> tuple[str, ...]:
    """The ``finish_reason`` of each choice of a whole OpenAI-format answer (tracing only)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ()
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return ()
    reasons = (c.get("finish_reason") for c in choices if isinstance(c, dict))
    return tuple(r for r in reasons if isinstance(r, str))


def enabled(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")) or environ.get("GATEWAY_OTEL") == "1"


def from_env(provider_types: ProviderTypes, environ: Mapping[str, str] | None = None) -> Spans | None:
    """Spans exported over OTLP/HTTP when configured and installed; None (tracing off) otherwise."""
    environ = os.environ if environ is None else environ
    if not enabled(environ):
        return None
    try:
        exporter = _otlp_exporter()
    except ImportError:
        log.warning("OpenTelemetry is configured but not installed (pip install 'llm-gateway[otel]')")
        return None
    return build(exporter, provider_types)


def build(exporter: SpanExporter, provider_types: ProviderTypes, *, batch: bool = True) -> Spans:
    """Spans sent to ``exporter``: batched in the background, or one by one (tests) with ``batch=False``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    # Attributes given here override the environment's, so OTEL_SERVICE_NAME is honoured explicitly.
    name = os.environ.get("OTEL_SERVICE_NAME") or "llm-gateway"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Spans(provider, provider_types)


def _otlp_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
