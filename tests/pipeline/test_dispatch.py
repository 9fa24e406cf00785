"""Dispatch's layers with scripted providers: fallback → breaker → retry → attempt."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Gauge
from tenacity import AsyncRetrying, RetryCallState

from gateway.config.model import BreakerPolicy, ModelConfig, RetryPolicy
from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    NoHealthyDeployment,
    UpstreamAuthError,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from gateway.pipeline.breaker import BreakerRegistry, Outcome
from gateway.pipeline.dispatch import Dispatcher, Resilience, breaker_outcome
from gateway.pipeline.retry import BackoffWait, retry_after_s
from gateway.pipeline.route import Plan
from gateway.providers.base import Operation, UpstreamRequest, UpstreamResponse, Usage
from gateway.tokens import prepare_encodings

FAST = RetryPolicy(attempts=3, backoff_initial_s=0.001, backoff_max_s=0.01)
OK = UpstreamResponse(b'{"ok": true}', None)


@pytest.fixture(scope="module", autouse=True)
def encodings() -> Iterator[None]:
    """The context-window checks count tokens offline; TIKTOKEN_CACHE_DIR is restored after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", os.environ.get("TIKTOKEN_CACHE_DIR", ""))
        prepare_encodings()
        yield


class Scripted:
    """A provider answering from a script: each item is returned, raised, or awaited (a delay)."""

    def __init__(self, name: str, *script: Any) -> None:
        self.name = name
        self.script = list(script)
        self.calls: list[UpstreamRequest] = []

    async def _next(self, request: UpstreamRequest) -> Any:
        self.calls.append(request)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, float):
            await asyncio.sleep(item)
            return OK
        if isinstance(item, BaseException):
            raise item
        return item

    def prepare(self, request: UpstreamRequest) -> None:
        return None

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        result: UpstreamResponse = await self._next(request)
        return result

    async def open_stream(self, request: UpstreamRequest) -> FakeStream:
        result: FakeStream = await self._next(request)
        return result


class FakeStream:
    def __init__(self, *frames: bytes | BaseException) -> None:
        self.frames = frames
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for f in self.frames:
            if isinstance(f, BaseException):
                raise f
            yield f

    async def aclose(self) -> None:
        self.closed = True


def model(name: str, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, provider=name, upstream=name, **kw)


def dispatcher(
    *providers: Scripted,
    timeout_s: float = 5.0,
    retry: RetryPolicy = FAST,
    breakers: BreakerRegistry | None = None,
    models: list[ModelConfig] | None = None,
    body: dict[str, Any] | None = None,
    attempt_timeouts: dict[str, float] | None = None,
) -> Dispatcher:
    candidates = tuple(models or [model(p.name) for p in providers])
    return Dispatcher(
        providers={p.name: p for p in providers},
        operation=Operation.CHAT,
        body=body or {"messages": [{"role": "user", "content": "hi"}]},
        headers={},
        plan=Plan("r", candidates, timeout_s, retry, None, None),
        deadline=time.monotonic() + timeout_s,
        resilience=Resilience(
            breakers=breakers,
            breaker_policy=BreakerPolicy(failures=2, reset_s=60),
            attempt_timeouts=attempt_timeouts or {},
        ),
    )


def registry() -> BreakerRegistry:
    return BreakerRegistry(Gauge("g", "g", ["deployment"], registry=CollectorRegistry()))


def e(status: int, retry_after: str | None = None) -> UpstreamStatusError:
    return UpstreamStatusError(status, f"upstream said {status}", retry_after=retry_after)


async def test_retries_a_5xx_then_succeeds() -> None:
    a = Scripted("a", e(500), e(503), OK)
    d = dispatcher(a)
    assert await d.send() is OK
    assert (d.attempts.count, d.attempts.retries, d.attempts.fallbacks) == (3, 2, 0)


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_client_error_is_neither_retried_nor_fallen_back_from(status: int) -> None:
    a, b = Scripted("a", e(status)), Scripted("b", OK)
    with pytest.raises(UpstreamStatusError) as info:
        await dispatcher(a, b).send()
    assert info.value.status == status and len(a.calls) == 1 and not b.calls


@pytest.mark.parametrize("status", [401, 403])
async def test_an_upstream_auth_failure_is_the_deployments_fault_fallbacks_run(status: int) -> None:
    """401/403 mean the operator's provider key is wrong: not retried (it cannot heal), but the next
    candidate is tried, and the breaker counts it, so a misconfigured deployment is skipped."""
    a, b = Scripted("a", e(status)), Scripted("b", OK)
    breakers = registry()
    d = dispatcher(a, b, breakers=breakers)
    assert await d.send() is OK
    assert (len(a.calls), len(b.calls), d.attempts.fallbacks) == (1, 1, 1)
    d = dispatcher(a, b, breakers=breakers)  # failures=2: this one opens a's circuit
    assert await d.send() is OK
    d = dispatcher(a, b, breakers=breakers)
    assert await d.send() is OK
    assert len(a.calls) == 2 and d.attempts.skipped == ["a: circuit open"]


@pytest.mark.parametrize("status", [401, 403])
async def test_an_upstream_auth_failure_alone_is_a_502_without_upstream_text(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    secret = UpstreamStatusError(
        status, "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx.", code="invalid_api_key"
    )
    with pytest.raises(UpstreamAuthError) as info:
        await dispatcher(Scripted("a", secret)).send()
    err = info.value
    assert (err.status, err.code, err.type) == (502, "upstream_auth_error", "server_error")
    assert "sk-proj" not in err.message and "Incorrect" not in err.message
    assert err.headers["x-should-retry"] == "false"
    logged = [r.getMessage() for r in caplog.records if "refused the gateway's credentials" in r.getMessage()]
    assert logged and "invalid_api_key" in logged[0] and "sk-proj-abc" not in logged[0]
    assert breaker_outcome(err) is Outcome.FAILURE


async def test_attempt_cap_then_fallback_in_order() -> None:
    a, b, c = Scripted("a", UpstreamUnavailable("reset")), Scripted("b", e(502)), Scripted("c", OK)
    d = dispatcher(a, b, c)
    assert await d.send() is OK
    assert (len(a.calls), len(b.calls), len(c.calls)) == (3, 3, 1)
    assert d.attempts.deployment is not None and d.attempts.deployment.name == "c"
    assert (d.attempts.count, d.attempts.fallbacks, d.attempts.retries) == (7, 2, 4)


async def test_exhausted_429_keeps_the_upstream_retry_after() -> None:
    a = Scripted("a", e(429, retry_after="0.01"))
    with pytest.raises(UpstreamStatusError) as info:
        await dispatcher(a).send()
    err = info.value
    assert (err.status, err.code, err.retry_after) == (429, "upstream_rate_limited", "0.01")
    assert len(a.calls) == 3


async def test_retry_after_beyond_backoff_max_is_not_retried_early() -> None:
    a, b = Scripted("a", e(429, retry_after="30")), Scripted("b", OK)
    d = dispatcher(a, b)
    assert await d.send() is OK
    assert len(a.calls) == 1, "the upstream asked for 30 s; the policy allows 0.01 s: move on"


def test_wait_is_the_larger_of_jitter_and_retry_after() -> None:
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.set_exception((UpstreamStatusError, e(429, retry_after="2.5"), None))
    wait = BackoffWait(RetryPolicy(attempts=3, backoff_initial_s=0.1, backoff_max_s=8))
    assert all(wait(state) == 2.5 for _ in range(20))
    state.set_exception((UpstreamStatusError, e(500), None))
    assert all(0 <= wait(state) <= 0.1 for _ in range(20)), "full jitter under initial · 2⁰"
    assert retry_after_s(e(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0
    assert retry_after_s(e(429, retry_after="soon")) == 0.0


async def test_timeouts_are_retried_within_the_deadline_and_end_as_504() -> None:
    a = Scripted("a", 10.0)
    d = dispatcher(a, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await d.send()
    assert time.monotonic() - started < 0.3 + 0.1
    assert len(a.calls) == 1, "the first attempt had the whole deadline: no time left to retry"


def test_a_deadline_cut_is_reported_only_once_the_deadline_passed() -> None:
    # The gateway serves on uvloop, whose timers may fire a little early (a millisecond clock, read
    # coarsely): here about a third of them do. A hosted-tool loop tells its wall time from an upstream's
    # failure by the clock, so the 504 of a deadline must come no sooner than the deadline.
    async def trials() -> list[float]:
        early = []
        for n in range(40):
            d = dispatcher(Scripted("a", 10.0), timeout_s=0.002 + n % 7 * 0.00013)
            with pytest.raises(DeadlineExceeded):
                await d.send()
            early.append(d.deadline - time.monotonic())
        return early

    assert max(uvloop.run(trials())) <= 0


async def test_per_attempt_timeout_leaves_time_for_the_fallback() -> None:
    a, b = Scripted("a", 10.0), Scripted("b", OK)
    d = dispatcher(a, b, timeout_s=2, attempt_timeouts={"a": 0.05})
    assert await d.send() is OK
    assert len(a.calls) == 3 and all(c.timeout_s <= 0.05 for c in a.calls)
    assert b.calls[0].timeout_s > 1


async def test_no_retry_that_would_start_past_the_deadline() -> None:
    a = Scripted("a", e(503, retry_after="0.28"))
    d = dispatcher(a, timeout_s=0.3, retry=RetryPolicy(attempts=5, backoff_initial_s=0.01, backoff_max_s=1))
    with pytest.raises(UpstreamUnavailable):
        await d.send()
    assert len(a.calls) == 1


async def test_skips_models_whose_context_window_is_too_small() -> None:
    small, big = Scripted("small", OK), Scripted("big", OK)
    long = {"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 50}
    models = [model("small", context_window=200), model("big", context_window=100_000)]
    d = dispatcher(small, big, models=models, body=long)
    assert await d.send() is OK
    assert not small.calls and len(big.calls) == 1
    assert d.attempts.skipped == ["small: context window"]


async def test_nothing_fits_is_a_400_context_length_exceeded() -> None:
    small = Scripted("small", OK)
    body = {"messages": [{"role": "user", "content": "word " * 300}]}
    d = dispatcher(small, models=[model("small", context_window=100)], body=body)
    with pytest.raises(BadRequest) as info:
        await d.send()
    assert info.value.code == "context_length_exceeded" and not small.calls


async def test_upstream_context_length_error_moves_to_the_next_model() -> None:
    err = UpstreamStatusError(400, "too long", code="context_length_exceeded")
    a, b = Scripted("a", err), Scripted("b", OK)
    assert await dispatcher(a, b).send() is OK
    assert len(a.calls) == 1


async def test_open_breaker_is_skipped_without_a_call() -> None:
    breakers = registry()
    a, b = Scripted("a", e(500)), Scripted("b", OK)
    for _ in range(2):  # failures: 2 — each request gives up on 'a' once
        await dispatcher(a, b, breakers=breakers).send()
    calls = len(a.calls)
    d = dispatcher(a, b, breakers=breakers)
    assert await d.send() is OK
    assert len(a.calls) == calls and d.attempts.skipped == ["a: circuit open"]
    assert d.attempts.fallbacks == 1


async def test_every_circuit_open_is_503_at_once_and_says_do_not_retry() -> None:
    breakers = registry()
    a = Scripted("a", e(502))
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await dispatcher(a, breakers=breakers).send()
    calls = len(a.calls)
    with pytest.raises(NoHealthyDeployment) as info:
        await dispatcher(a, breakers=breakers).send()
    assert len(a.calls) == calls
    assert info.value.status == 503 and info.value.headers["x-should-retry"] == "false"
    assert int(info.value.headers["retry-after"]) > 50


async def test_a_429_or_a_client_error_does_not_open_the_circuit() -> None:
    breakers = registry()
    for err in (e(429, retry_after="5"), e(400), e(429, retry_after="5"), e(404)):
        with pytest.raises(UpstreamStatusError):
            await dispatcher(Scripted("a", err), breakers=breakers).send()
    assert breakers.get("a", BreakerPolicy()).state == "closed"


def test_breaker_outcome_classification() -> None:
    assert breaker_outcome(e(500)) is Outcome.FAILURE
    assert breaker_outcome(UpstreamUnavailable("reset")) is Outcome.FAILURE
    assert breaker_outcome(DeadlineExceeded("slow")) is Outcome.FAILURE
    assert breaker_outcome(e(429)) is Outcome.NEUTRAL
    assert breaker_outcome(e(400)) is Outcome.SUCCESS


async def test_a_stream_failing_before_its_first_frame_falls_back() -> None:
    broken = FakeStream(UpstreamStatusError(502, "in-band error"))
    a, b = Scripted("a", broken), Scripted("b", FakeStream(b"data: 1\n\n", b"data: 2\n\n"))
    d = dispatcher(a, b, retry=RetryPolicy(attempts=1))
    stream = await d.open_stream()
    assert [f async for f in stream] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert broken.closed and d.attempts.deployment is not None and d.attempts.deployment.name == "b"


async def test_a_stream_failing_after_its_first_frame_raises_to_the_caller() -> None:
    a = Scripted("a", FakeStream(b"data: 1\n\n", UpstreamUnavailable("reset")))
    stream = await dispatcher(a).open_stream()
    received = []
    with pytest.raises(UpstreamUnavailable):
        async for frame in stream:
            received.append(frame)
    assert received == [b"data: 1\n\n"] and len(a.calls) == 1


class SlowStream(FakeStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(10)
        yield b"data: 2\n\n"


async def test_a_stream_ends_at_the_deadline() -> None:
    inner = SlowStream()
    stream = await dispatcher(Scripted("a", inner), timeout_s=0.2).open_stream()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        async for _ in stream:
            pass
    assert time.monotonic() - started < 0.2 + 0.1
    await stream.aclose()
    assert inner.closed


async def test_a_deadline_passing_while_the_client_is_written_to_ends_the_stream_at_the_next_wait() -> None:
    inner = FakeStream(b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n")
    stream = await dispatcher(Scripted("a", inner), timeout_s=0.1).open_stream()
    received = []
    with pytest.raises(DeadlineExceeded):
        async for frame in stream:
            received.append(frame)
            if len(received) == 2:
                await asyncio.sleep(0.15)  # busy elsewhere (not awaiting the upstream) past the deadline
    assert received == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_a_client_cancel_during_a_stream_stays_a_cancel() -> None:
    stream = await dispatcher(Scripted("a", SlowStream()), timeout_s=5.0).open_stream()

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()


class Preparing(Scripted):
    """A scripted provider that encodes requests ahead, as the OpenAI adapter does."""

    def __init__(self, name: str, *script: Any) -> None:
        super().__init__(name, *script)
        self.prepared: list[UpstreamRequest] = []

    def prepare(self, request: UpstreamRequest) -> None:
        request.content = b"encoded ahead"
        self.prepared.append(request)


async def test_the_first_attempt_sends_the_request_prepared_ahead() -> None:
    first = Preparing("a", OK)
    d = dispatcher(first)
    d.prepare()
    assert first.prepared and first.prepared[0].body["model"] == "a"
    assert await d.send() is OK
    (sent,) = first.calls
    assert sent is first.prepared[0] and sent.content == b"encoded ahead"
    assert 0 < sent.timeout_s <= 5.0  # set by the attempt, not left at the placeholder


async def test_a_retry_and_a_fallback_build_their_own_requests() -> None:
    first, second = Preparing("a", e(503), e(503), e(503)), Preparing("b", OK)
    d = dispatcher(first, second)
    d.prepare()
    assert await d.send() is OK
    assert len(first.calls) == 3 and first.calls[0].content == b"encoded ahead"
    assert all(r.content is None for r in first.calls[1:])  # used once
    assert second.prepared == [] and second.calls[0].content is None and second.calls[0].body["model"] == "b"


async def test_a_failing_prepare_only_means_the_attempt_builds_the_request() -> None:
    class Broken(Scripted):
        def prepare(self, request: UpstreamRequest) -> None:
            raise ValueError("cannot encode")

    provider = Broken("a", OK)
    d = dispatcher(provider)
    d.prepare()
    assert d.prepared is None
    assert await d.send() is OK and provider.calls[0].content is None
