"""Stage 7, dispatch: send to the plan's candidates as nested layers, each with one job.

    fallback   walk the candidates in order: skip a model whose context window the request does not
               fit and a deployment whose circuit is open; move on when one fails retryably
    breaker    ask the deployment's circuit breaker before, tell it the outcome after (breaker.py)
    retry      retry one deployment with jittered backoff within the deadline (retry.py)
    attempt    give one try the time left (capped by the provider's ``timeout_s``) and send once

The route's ``timeout_s`` is one deadline for all of it, and for a stream's whole body too. A stream
is opened, and its first frame read, inside the attempt: an upstream that fails before its first
frame is retried or fallen back from like any other; once a frame has gone to the client, a failure
ends the stream with an SSE error event (proxy.py). Nothing here knows which provider it talks to.

Errors: the layers below raise gateway errors only; pybreaker's ``CircuitBreakerError`` (as
``BreakerOpen``) stops at the fallback layer, tenacity's ``RetryError`` at the retry layer, and
``final_error`` turns what the walk saw into the one error the client gets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.model import BreakerPolicy, ModelConfig
from gateway.deadline import passed
from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    NoHealthyDeployment,
    UpstreamAuthError,
    UpstreamStatusError,
    UpstreamUnavailable,
    retry_headers,
)
from gateway.pipeline.admit import max_output, prompt_tokens
from gateway.pipeline.breaker import BreakerOpen, BreakerRegistry, Outcome
from gateway.pipeline.retry import with_retries
from gateway.pipeline.route import Plan
from gateway.providers.base import (
    NativeRequest,
    Operation,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
    Usage,
)
from gateway.redact import redact

T = TypeVar("T")
Call = Callable[[Provider, UpstreamRequest], Awaitable[T]]

FAR_REOPEN_S = 10.0
"""When every candidate's circuit stays open longer than this, the 503 says ``x-should-retry: false``:
an SDK's retries (0.5-8 s apart) would only meet the open circuits again."""

log = logging.getLogger("gateway")


@dataclass(slots=True)
class Attempts:
    """What dispatch did, for headers, metrics and the log line."""

    count: int = 0
    deployment: ModelConfig | None = None
    fallbacks: int = 0
    retries: int = 0
    upstream_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Candidates passed over without a call: ``<name>: circuit open`` / ``<name>: context window``."""


@dataclass(frozen=True, slots=True)
class Resilience:
    """What dispatch needs besides the plan: the breakers (app-long) and this config's policies."""

    breakers: BreakerRegistry | None = None
    breaker_policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    attempt_timeouts: Mapping[str, float] = field(default_factory=dict)
    """Provider name → its routes.yaml ``timeout_s`` (per attempt), where set."""
    native_formats: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Provider name → the client wire formats its type speaks as they are (registry ``native``)."""


@dataclass(slots=True)
class Dispatcher:
    providers: Mapping[str, Provider]
    operation: Operation
    body: dict[str, Any]
    headers: dict[str, str]
    plan: Plan
    deadline: float
    """``time.monotonic()`` by which everything, every attempt and a stream's last frame, is done."""
    attempts: Attempts = field(default_factory=Attempts)
    resilience: Resilience = field(default_factory=Resilience)
    prompt_tokens: int | None = None
    """The prompt's token count if admission already made it; counted on first need otherwise."""
    prepared: tuple[ModelConfig, UpstreamRequest] | None = None
    """The first candidate's request, built by ``prepare``; used once, by the first attempt on it."""
    native: NativeRequest | None = None
    """The client's body in its own wire format, for candidates that speak it (``/v1/messages``)."""

    def prepare(self) -> None:
        """Build the first candidate's request ahead, and let its adapter prepare it (``prepare``):
        the proxy calls this while admission is in flight, so it is off the request's critical path.
        A failure here only means the attempt builds it again (and meets the failure there)."""
        if not self.plan.candidates:
            return
        first = self.plan.candidates[0]
        provider = self.providers.get(first.provider)
        if provider is None:
            return
        request = UpstreamRequest(
            self.operation, {**self.body, "model": first.upstream}, timeout_s=0.0, headers=self.headers
        )
        if self.native is not None:
            request.native = self._native_for(first)
        try:
            provider.prepare(request)
        except Exception:  # the attempt will build and encode it again, and report what fails
            log.debug("preparing the request for %s failed", first.name, exc_info=True)
            return
        self.prepared = (first, request)

    # Pass-through layers are plain functions handing on the coroutine: one frame less per request.
    def send(self) -> Awaitable[UpstreamResponse]:
        return self._fallback(_send)

    def open_stream(self) -> Awaitable[UpstreamStream]:
        return self._fallback(self._open_primed)

    # -- fallback ----------------------------------------------------------------------------------------

    async def _fallback(self, call: Call[T]) -> T:
        last: GatewayError | None = None
        open_for: list[float] = []
        too_small: list[str] = []
        for n, deployment in enumerate(self.plan.candidates):
            if not self._fits(deployment):
                too_small.append(deployment.name)
                self.attempts.skipped.append(f"{deployment.name}: context window")
                continue
            if self.native is not None and not self._expressible(deployment):
                self.attempts.skipped.append(f"{deployment.name}: cannot express the request")
                continue
            if self.deadline - time.monotonic() < 0:
                break
            if n:  # moved on from the plan's first choice (failed or skipped)
                self.attempts.fallbacks += 1
            try:
                return await self._guarded(deployment, call)
            except BreakerOpen as exc:
                open_for.append(exc.reopen_in_s)
                self.attempts.skipped.append(f"{deployment.name}: circuit open")
                continue
            except UpstreamAuthError as exc:  # this deployment is misconfigured; the next may not be
                last = exc
            except UpstreamStatusError as exc:
                if _context_exceeded(exc):  # the estimate was short: the next, larger model may fit
                    too_small.append(deployment.name)
                elif not exc.retryable:
                    raise
                last = exc
            except (UpstreamUnavailable, DeadlineExceeded) as exc:
                last = exc
            self.attempts.errors.append(last.message)
        if last is None and not open_for and not too_small and self.native is not None:
            untranslatable = self.native.untranslatable
            if isinstance(untranslatable, GatewayError):  # no candidate could take the request as sent
                raise untranslatable
        raise final_error(last, self.attempts.count, open_for, too_small)

    def _native_for(self, deployment: ModelConfig) -> NativeRequest | None:
        """The native request if this deployment's provider speaks its format (else the OpenAI form)."""
        native = self.native
        if native is None or not native.enabled:
            return None
        formats = self.resilience.native_formats.get(deployment.provider, ())
        return native if native.format in formats else None

    def _expressible(self, deployment: ModelConfig) -> bool:
        """Whether this deployment can take the request: natively, or in an OpenAI form that lost nothing."""
        assert self.native is not None
        return self.native.untranslatable is None or self._native_for(deployment) is not None

    def _fits(self, deployment: ModelConfig) -> bool:
        window = deployment.context_window
        if window is None or self.operation is Operation.EMBEDDINGS:
            return True
        if self.prompt_tokens is None:
            self.prompt_tokens = prompt_tokens(self.operation, self.body, deployment.upstream)
        output = max_output(self.body, deployment) or 0
        if deployment.max_output_tokens is not None:
            output = min(output, deployment.max_output_tokens)
        return self.prompt_tokens + output <= window

    # -- breaker -----------------------------------------------------------------------------------------

    async def _guarded(self, deployment: ModelConfig, call: Call[T]) -> T:
        breakers = self.resilience.breakers
        if breakers is None:
            return await self._retried(deployment, call)
        breaker = breakers.get(deployment.name, self.resilience.breaker_policy)
        probe = breaker.allow()  # raises BreakerOpen
        outcome = Outcome.NEUTRAL  # also what a cancelled call leaves
        try:
            result = await self._retried(deployment, call)
            outcome = Outcome.SUCCESS
            return result
        except GatewayError as exc:
            outcome = breaker_outcome(exc)
            raise
        finally:
            breaker.record(outcome, probe)

    # -- retry -------------------------------------------------------------------------------------------

    def _retried(self, deployment: ModelConfig, call: Call[T]) -> Awaitable[T]:
        return with_retries(
            lambda: self._attempt(deployment, call), self.plan.retry, self.deadline, self._count_retry
        )

    def _count_retry(self) -> None:
        self.attempts.retries += 1

    # -- attempt -----------------------------------------------------------------------------------------

    async def _attempt(self, deployment: ModelConfig, call: Call[T]) -> T:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("The request deadline passed before an upstream answered.")
        timeout = min(remaining, self.resilience.attempt_timeouts.get(deployment.provider, math.inf))
        provider = self.providers[deployment.provider]
        prepared, self.prepared = self.prepared, None
        if prepared is not None and prepared[0] is deployment:
            request = prepared[1]
            request.timeout_s = timeout
        else:
            request = UpstreamRequest(
                operation=self.operation,
                body={**self.body, "model": deployment.upstream},
                timeout_s=timeout,
                headers=self.headers,
            )
            if self.native is not None:
                request.native = self._native_for(deployment)
        if self.native is not None:  # what the ingress renders: this attempt's wire format
            self.native.served = request.native is not None
        self.attempts.count += 1
        self.attempts.deployment = deployment
        started = time.perf_counter()
        try:
            # Adapters bound their own waits by timeout_s; this also bounds a stream's first frame.
            async with asyncio.timeout(timeout):
                return await call(provider, request)
        except TimeoutError as exc:
            if timeout == remaining:  # the deadline's timer: it is past only once the clock says so
                await passed(self.deadline)
            raise DeadlineExceeded(f"upstream '{deployment.name}' did not answer in {timeout:.3g}s") from exc
        except UpstreamStatusError as exc:
            if exc.status in (401, 403):
                raise upstream_auth_error(deployment, exc) from None
            raise
        finally:
            self.attempts.upstream_s += time.perf_counter() - started

    async def _open_primed(self, provider: Provider, request: UpstreamRequest) -> UpstreamStream:
        """Open the stream and read its first frame, so a failure before it can still be retried."""
        stream = await provider.open_stream(request)
        frames = aiter(stream)
        try:
            first: bytes | None = await anext(frames)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(stream, frames)
            raise
        return PrimedStream(stream, frames, first, self.deadline)


def _send(provider: Provider, request: UpstreamRequest) -> Awaitable[UpstreamResponse]:
    return provider.send(request)


class PrimedStream:
    """An open upstream stream whose first frame was read ahead; the rest must come by the deadline.

    One timer per stream, not an ``asyncio.timeout`` per frame (a tenth of a chunk's pass-through
    cost): when the deadline passes while the stream waits for the upstream, the wait is cancelled
    and becomes ``DeadlineExceeded``; when it passes while the client is being written to, the next
    wait fails at once.
    """

    def __init__(
        self, inner: UpstreamStream, frames: AsyncIterator[bytes], first: bytes | None, deadline: float
    ) -> None:
        self._inner = inner
        self._frames = frames
        self._first = first
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False
        self._expired = False

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._inner.usage = value

    @property
    def usage_frame(self) -> bytes | None:
        return self._inner.usage_frame

    @usage_frame.setter
    def usage_frame(self, value: bytes | None) -> None:
        self._inner.usage_frame = value

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first is None:
            return
        yield self._first
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + self._deadline - time.monotonic(), self._expire)
        try:
            while True:
                if self._expired:
                    raise DeadlineExceeded("The request deadline passed while the stream was running.")
                assert self._task is not None
                cancelling = self._task.cancelling()
                self._waiting = True
                try:
                    frame = await anext(self._frames)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self._expired and self._task.uncancel() <= cancelling:
                        raise DeadlineExceeded(
                            "The request deadline passed while the stream was running."
                        ) from None
                    raise
                finally:
                    self._waiting = False
                yield frame
        finally:
            self._timer.cancel()

    def _expire(self) -> None:
        self._expired = True
        if self._waiting and self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await _close(self._inner, self._frames)


async def _close(stream: UpstreamStream, frames: AsyncIterator[bytes]) -> None:
    try:
        if isinstance(frames, AsyncGenerator):
            await frames.aclose()
    finally:
        await stream.aclose()


def upstream_auth_error(deployment: ModelConfig, exc: UpstreamStatusError) -> UpstreamAuthError:
    """An upstream 401/403 is the operator's credentials failing, not the client's key: the client
    gets a 502 without the upstream's text (it may quote the provider key, masked or not); the
    detail goes to the log, redacted and truncated."""
    log.warning(
        "upstream %s refused the gateway's credentials: HTTP %d %s: %s",
        deployment.name,
        exc.status,
        exc.code or exc.type,
        redact(exc.message[:300]),
    )
    return UpstreamAuthError(
        f"upstream '{deployment.name}' refused the gateway's credentials (HTTP {exc.status}); "
        "the operator must fix the provider configuration."
    )


def breaker_outcome(exc: GatewayError) -> Outcome:
    """5xx, timeouts, connection failures and refused credentials (``UpstreamAuthError``) count
    against the deployment; 429 is neutral; the rest (4xx: the request's fault) shows the deployment
    answering well."""
    if isinstance(exc, UpstreamStatusError):
        if exc.status == 429:
            return Outcome.NEUTRAL
        return Outcome.FAILURE if exc.status >= 500 else Outcome.SUCCESS
    if isinstance(exc, UpstreamUnavailable | DeadlineExceeded | UpstreamAuthError):
        return Outcome.FAILURE
    return Outcome.SUCCESS


def _context_exceeded(exc: UpstreamStatusError) -> bool:
    return exc.status == 400 and exc.code == "context_length_exceeded"


def final_error(
    last: GatewayError | None, attempts: int, open_for: list[float], too_small: list[str]
) -> GatewayError:
    """The one error the client gets once every candidate was tried or skipped."""
    if last is None and open_for:
        reopen = min(open_for)
        err = NoHealthyDeployment(
            f"Every deployment for this request is unavailable (circuit open); retry in {reopen:.0f}s."
        )
        err.headers.update(retry_headers(max(reopen, 1.0)))
        if reopen > FAR_REOPEN_S:
            err.headers["x-should-retry"] = "false"
        return err
    if (last is None or _is_context(last)) and too_small:
        return BadRequest(
            "The request exceeds the context window of every model it may use "
            f"({', '.join(too_small)}); shorten the messages or lower max_tokens.",
            param="messages",
            code="context_length_exceeded",
        )
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
    if isinstance(last, UpstreamAuthError):
        return UpstreamAuthError(f"Upstream failed after {attempts} attempt(s): {last.message}")
    code = last.code if isinstance(last, UpstreamUnavailable) else None  # e.g. upstream_too_large
    return UpstreamUnavailable(f"Upstream failed after {attempts} attempt(s): {last.message}", code=code)


def _is_context(err: GatewayError) -> bool:
    return isinstance(err, UpstreamStatusError) and _context_exceeded(err)
