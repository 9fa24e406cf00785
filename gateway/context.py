"""One request's record as it moves through the pipeline: what headers, metrics and the log read."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.pipeline.admit import Reservation
from gateway.pipeline.auth import Principal
from gateway.pipeline.dispatch import Attempts
from gateway.pipeline.route import Plan
from gateway.providers.base import Usage

_PROCESS = os.urandom(8).hex()
_SEQUENCE = itertools.count(1)


def _reseed() -> None:
    global _PROCESS, _SEQUENCE
    _PROCESS, _SEQUENCE = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed)  # a forked worker must not repeat its parent's ids


def new_request_id() -> str:
    """``req_`` + 32 hex digits, unique across replicas: 64 random bits per process, then a counter
    (a uuid4 per request costs a getrandom syscall; these ids need uniqueness, not secrecy)."""
    return f"req_{_PROCESS}{next(_SEQUENCE):016x}"


@dataclass(slots=True)
class Traced:
    """What a span needs beyond the Exchange (gateway/otel.py); gathered only when tracing is on."""

    traceparent: str | None = None
    """The caller's W3C trace context, continued by the request's span; malformed ones are ignored."""
    tracestate: str | None = None
    finish_reasons: tuple[str, ...] = ()
    """The answer's choices' ``finish_reason`` values, in choice order."""


@dataclass(slots=True)
class Exchange:
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    endpoint: str = ""
    model_requested: str = ""
    stream: bool = False
    principal: Principal | None = None
    plan: Plan | None = None
    attempts: Attempts = field(default_factory=Attempts)
    cache: str = "miss"
    usage: Usage | None = None
    usage_source: str | None = None
    """``upstream`` (reported by the provider), ``counted`` (tiktoken: the upstream gave none, or an
    unusable one) or None."""
    usage_anomaly: str | None = None
    """What was wrong with the upstream's usage, when it was not used (``usage_check.KINDS``)."""
    cost: Decimal = Decimal(0)
    priced: Usage | None = None
    """The usage ``cost`` was worked out from (the pipeline prices once, when the cost is first needed)."""
    status: int = 200
    error_code: str | None = None
    ttft_s: float | None = None
    trace: str | None = None
    client_retry: str | None = None
    """The SDK's ``x-stainless-retry-count``: how many times the client already retried this call."""
    reservation: Reservation | None = None
    limit_headers: dict[str, str] = field(default_factory=dict)
    stream_ended: bool = False
    user: str | None = None
    """The end user (``x-gateway-user``, else the body's ``user``); set only when the ledger is on."""
    content: dict[str, str] | None = None
    """Redacted prompt/answer text for the log line; set only on routes with ``log_content``."""
    plugins: dict[str, dict[str, object]] | None = None
    """Plugin annotations by plugin name, for the log line; set only on routes with plugins."""
    traced: Traced | None = None
    """Set only when tracing is on: the span's parent and the answer's finish reasons."""
    memory: dict[str, object] | None = None
    """What conversation memory did to this ``/v1/responses`` turn (summarized / truncated turns)."""

    @property
    def tenant(self) -> str:
        return self.principal.tenant if self.principal else "none"

    @property
    def route(self) -> str:
        return self.plan.route if self.plan else "none"

    @property
    def model(self) -> str:
        d = self.attempts.deployment
        return d.name if d else "none"

    def response_headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.request_id, **self.limit_headers}
        if self.plan is not None:
            headers["x-gateway-route"] = self.plan.route
        if self.attempts.deployment is not None:
            headers["x-gateway-model"] = self.attempts.deployment.name
            headers["x-gateway-attempts"] = str(self.attempts.count)
            headers["x-gateway-cache"] = self.cache
        return headers
