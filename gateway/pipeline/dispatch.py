"""Stage 7, dispatch: send to the plan's candidates as nested layers, each with one job.

    fallback   walk the plan's candidates in order, moving on when one fails retryably
    attempt    give one candidate the time left before the deadline and send once

Retries with backoff and circuit breakers slot in between the two (see the resilience work);
nothing here knows which provider it is talking to.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.model import ModelConfig
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    NoHealthyDeployment,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from gateway.pipeline.route import Plan
from gateway.providers.base import Operation, Provider, UpstreamRequest, UpstreamResponse, UpstreamStream

T = TypeVar("T")


@dataclass(slots=True)
class Attempts:
    """What dispatch did, for headers, metrics and the log line."""

    count: int = 0
    deployment: ModelConfig | None = None
    fallbacks: int = 0
    upstream_s: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Dispatcher:
    providers: Mapping[str, Provider]
    operation: Operation
    body: dict[str, Any]
    headers: dict[str, str]
    plan: Plan
    deadline: float
    attempts: Attempts = field(default_factory=Attempts)

    async def send(self) -> UpstreamResponse:
        return await self._fallback(lambda p, r: p.send(r))

    async def open_stream(self) -> UpstreamStream:
        return await self._fallback(lambda p, r: p.open_stream(r))

    async def _fallback(self, call: Callable[[Provider, UpstreamRequest], Awaitable[T]]) -> T:
        last: GatewayError | None = None
        for n, deployment in enumerate(self.plan.candidates):
            if n:
                self.attempts.fallbacks += 1
            try:
                return await self._attempt(deployment, call)
            except UpstreamStatusError as exc:
                if not exc.retryable:
                    raise
                last = exc
            except (UpstreamUnavailable, DeadlineExceeded) as exc:
                last = exc
            self.attempts.errors.append(last.message)
            if time.monotonic() >= self.deadline:
                break
        raise _final_error(last, self.attempts.count)

    async def _attempt(
        self, deployment: ModelConfig, call: Callable[[Provider, UpstreamRequest], Awaitable[T]]
    ) -> T:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("The request deadline passed before an upstream answered.")
        provider = self.providers[deployment.provider]
        request = UpstreamRequest(
            operation=self.operation,
            body={**self.body, "model": deployment.upstream},
            timeout_s=remaining,
            headers=self.headers,
        )
        self.attempts.count += 1
        self.attempts.deployment = deployment
        started = time.perf_counter()
        try:
            return await call(provider, request)
        finally:
            self.attempts.upstream_s += time.perf_counter() - started


def _final_error(last: GatewayError | None, attempts: int) -> GatewayError:
    if last is None:
        return NoHealthyDeployment("No deployment is available for this request.")
    if isinstance(last, DeadlineExceeded):
        return DeadlineExceeded(f"Upstream timed out after {attempts} attempt(s): {last.message}")
    if isinstance(last, UpstreamStatusError) and last.status == 429:
        return UpstreamStatusError(
            429,
            f"Upstream is rate limited after {attempts} attempt(s): {last.message}",
            type="rate_limit_error",
            code="upstream_rate_limited",
            retry_after=last.retry_after,
        )
    return UpstreamUnavailable(f"Upstream failed after {attempts} attempt(s): {last.message}")
