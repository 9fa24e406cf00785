"""The retry layer of dispatch: tenacity around one deployment's attempts.

* **What is retried**: what a later try may fix — 408, 409, 429 and 5xx answers, connect errors,
  resets, malformed bodies (``UpstreamUnavailable``) and timeouts (``DeadlineExceeded``). Any other
  4xx is the request's fault and goes back to the client at once.
* **When**: after ``max(jittered exponential backoff, the upstream's retry-after)``. The backoff is
  tenacity's full jitter, ``uniform(0, min(backoff_initial_s · 2ⁿ, backoff_max_s))``. An upstream that
  asks for a longer wait than ``backoff_max_s`` is not retried early against its word: the layer
  gives up on the deployment (the fallback layer moves on, or the client gets the 429 and its
  ``retry-after``).
* **How often**: at most ``attempts`` tries (the first included), and never a try that could not
  start, after its wait, with at least ``MIN_ATTEMPT_S`` left before the route's deadline.

tenacity's ``RetryError`` is mapped back to the last attempt's gateway error here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from gateway.config.model import RetryPolicy
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    UpstreamStatusError,
    UpstreamUnavailable,
    retry_after_seconds,
)

T = TypeVar("T")

MIN_ATTEMPT_S = 0.05
"""A try that would start with less time than this before the deadline is not made."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamStatusError):
        return exc.retryable
    return isinstance(exc, UpstreamUnavailable | DeadlineExceeded)


def retry_after_s(exc: BaseException | None, now: float | None = None) -> float:
    """The upstream's requested wait in seconds (``retry-after-ms`` already folded in), else 0; a
    malformed hint (``nan``, ``inf``, garbage) is no hint, and none is longer than ``MAX_RETRY_AFTER_S``."""
    hint = exc.retry_after if isinstance(exc, UpstreamStatusError) else None
    seconds = retry_after_seconds(hint, now)
    return 0.0 if seconds is None else seconds


class BackoffWait(wait_base):
    """``max(jittered exponential backoff, upstream retry-after)``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._jitter = wait_random_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        hint = retry_after_s(outcome.exception() if outcome is not None else None)
        return max(self._jitter(retry_state), hint)


class DeadlineStop(stop_base):
    """Stop when the coming wait is longer than the policy allows or would leave no time to try."""

    def __init__(self, deadline: float, max_wait_s: float) -> None:
        self._deadline = deadline
        self._max_wait_s = max_wait_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        wait = retry_state.upcoming_sleep  # tenacity computes the wait before it asks whether to stop
        if wait > self._max_wait_s:
            return True
        return time.monotonic() + wait + MIN_ATTEMPT_S > self._deadline


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    deadline: float,
    on_retry: Callable[[], None],
) -> T:
    """Run ``attempt`` until it succeeds, fails for good, or the policy or the deadline says stop.

    The first try runs bare: most requests succeed at once, and tenacity's machinery (~25 µs) is
    only built when there is something to retry. Its first trial then replays that first failure
    instead of calling again, so waits and stops are computed exactly as if it had made the call.
    """
    try:
        return await attempt()
    except Exception as exc:
        if policy.attempts <= 1 or not is_retryable(exc):
            raise
        first: Exception | None = exc

    async def replay_then_attempt() -> T:
        nonlocal first
        if first is not None:
            failed, first = first, None
            raise failed
        return await attempt()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(policy.attempts, 1)) | DeadlineStop(deadline, policy.backoff_max_s),
        wait=BackoffWait(policy),
        retry=retry_if_exception(is_retryable),
        before_sleep=lambda _state: on_retry(),
    )
    try:
        async for trial in retrying:
            with trial:
                return await replay_then_attempt()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        if isinstance(last, GatewayError):
            raise last from None
        raise
    raise AssertionError("tenacity ended without a result or an error")  # pragma: no cover
