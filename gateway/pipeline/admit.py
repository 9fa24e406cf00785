"""Stage 4, admit: rate limits and the budget reservation, for the key and its tenant, in one store call.

The reservation is the worst case: the prompt estimate (tiktoken, padded by ``estimate_margin``)
priced at the dearest candidate's input price, plus the most output the request may produce at that
candidate's output price. So that the output really is bounded, a request with a budget and no
``max_tokens`` gets the reserved bound written into the body sent upstream.

An admission that fails (the store unreachable, its reply lost, any error) may still have run, or
may run later (a stalled Redis reads it when it wakes): its request id is then released through the
settler, which re-sends the release until the store acknowledges it, so the reservation does not
hold budget until its lease runs out. ``store_failure: open`` admits on the local fallback store
instead, within the bounds of ``gateway/pipeline/open_mode.py``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gateway.config.model import Budget, Defaults, Limits, ModelConfig
from gateway.errors import BudgetExceeded, RateLimited, StoreUnavailable, retry_headers
from gateway.memo import Memo
from gateway.pipeline.auth import Principal
from gateway.pipeline.budget_refusal import budget_refusal
from gateway.pipeline.open_mode import LastKnown, local_ask, refused_by_allowance
from gateway.pipeline.parse import ParsedRequest
from gateway.pipeline.route import Plan
from gateway.providers.base import Operation
from gateway.store.base import (
    NANO,
    Admission,
    Ask,
    ScopeLimits,
    ScopeState,
    Store,
    StoreUnavailableError,
    StoreUnreachableError,
)
from gateway.tokens import count_chat, count_text

log = logging.getLogger("gateway.admit")

DEFAULT_MAX_OUTPUT = 4096
"""Output bound for a model with no ``max_output_tokens`` when the request sets none."""


# Built per request, so plain slotted dataclasses: a frozen one costs about 1 µs more to build (each
# field goes through object.__setattr__). Nothing changes them once built.
@dataclass(slots=True)
class Reservation:
    ask: Ask
    admission: Admission
    local: Ask | None = None
    """What the local fallback store admitted while the shared one was down (``store_failure: open``):
    the settlement goes to both, the local one with these scopes (``open_mode.local_ask``)."""


class Releases(Protocol):
    """The settler, as admission sees it (``gateway/pipeline/spend.py``)."""

    def release(self, ask: Ask) -> None:
        """Free ``ask``'s reservation by request id, re-sent until the store acknowledges it."""
        ...

    def store_answered(self) -> None:
        """The store answered again after failing: what waits to be settled may go now."""
        ...


def period_start(budget: Budget | None, now: float) -> int:
    """Start of the budget's current period, unix seconds, on UTC boundaries (weeks start Monday)."""
    if budget is None or budget.period == "total":
        return 0
    return _period_start(budget.period, int(now // 86400))


@functools.lru_cache(maxsize=64)
def _period_start(period: str, day_number: int) -> int:
    """Computed once per period kind and UTC day (``day_number`` = days since the epoch)."""
    day = datetime.fromtimestamp(day_number * 86400, UTC)
    if period == "weekly":
        day -= timedelta(days=day.weekday())
    elif period == "monthly":
        day = day.replace(day=1)
    return int(day.timestamp())


def _scope(name: str, limits: Limits, budget: Budget | None, now: float) -> ScopeLimits:
    return ScopeLimits(
        scope=name,
        rpm=limits.rpm,
        tpm=limits.tpm,
        budget_nano=round(budget.usd * NANO) if budget is not None else None,
        period_start=period_start(budget, now),
    )


def scopes_of(principal: Principal, now: float) -> tuple[ScopeLimits, ...]:
    """The tenant's and the key's limits; scopes with no limit at all are left out."""
    scopes = (
        _scope("t", principal.tenant_limits, principal.tenant_budget, now),
        _scope(f"k:{principal.key_id}", principal.key_limits, principal.key_budget, now),
    )
    return tuple(s for s in scopes if s.rpm or s.tpm or s.budget_nano is not None)


def max_output(body: Mapping[str, Any], deployment: ModelConfig | None) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def choices(operation: Operation, body: Mapping[str, Any]) -> int:
    """How many completions the request makes the upstream generate (and bill): ``n``, and on
    ``/v1/completions`` ``best_of`` (generated server-side, ``n`` of them returned). parse.py has
    range-checked both."""
    if operation is Operation.EMBEDDINGS:
        return 1
    n = body.get("n")
    count = n if isinstance(n, int) and n > 1 else 1
    if operation is Operation.COMPLETIONS:
        best = body.get("best_of")
        if isinstance(best, int) and best > count:
            count = best
    return count


def prompt_tokens(
    operation: Operation, body: Mapping[str, Any], model: str, *, remember: str | None = None
) -> int:
    """The prompt's token estimate (tiktoken), before the margin; ``remember``: a scope under which
    counts of long texts are kept (``gateway.tokens.REMEMBERED``)."""
    if operation is Operation.CHAT:
        return count_chat(body.get("messages") or [], model, body.get("tools"), remember=remember)
    if operation is Operation.COMPLETIONS:
        return count_text(body.get("prompt") or "", model, remember=remember)
    return count_text(body.get("input") or "", model, remember=remember)


def _nano(tokens: int, per_mtok: float) -> float:
    return tokens * per_mtok * (NANO / 1_000_000)


@dataclass(slots=True)
class Estimate:
    prompt_tokens: int
    output_tokens: int
    """The output bound of one completion (what ``max_tokens`` says)."""
    cost_nano: int
    output_bound_added: bool
    choices: int = 1
    """Completions generated (``n``, ``best_of``): the output reserved is ``choices × output_tokens``."""


def estimate(parsed: ParsedRequest, plan: Plan, margin: float, tenant: str | None = None) -> Estimate:
    """``tenant``: the scope under which counts of the prompt's long texts (a system prompt) are kept."""
    first = plan.candidates[0]
    parsed.prompt_tokens = prompt_tokens(parsed.operation, parsed.body, first.upstream, remember=tenant)
    prompt = math.ceil(parsed.prompt_tokens * (1 + margin))
    asked = max_output(parsed.body, first)
    embeddings = parsed.operation is Operation.EMBEDDINGS
    n = choices(parsed.operation, parsed.body)
    worst_cost = 0.0
    worst_output = 0
    for deployment in plan.candidates:
        output = 0 if embeddings else asked or deployment.max_output_tokens or DEFAULT_MAX_OUTPUT
        worst_output = max(worst_output, output)
        price = deployment.price
        cost = _nano(prompt, price.input_per_mtok) + _nano(n * output, price.output_per_mtok)
        worst_cost = max(worst_cost, cost)
    return Estimate(prompt, worst_output, math.ceil(worst_cost), asked is None and not embeddings, n)


class Admitter:
    def __init__(
        self,
        store: Store,
        fallback: Store,
        defaults: Defaults,
        *,
        releases: Releases | None = None,
        known: LastKnown | None = None,
    ) -> None:
        self._store = store
        self._fallback = fallback
        self._defaults = defaults
        self._releases = releases
        self._known = known or LastKnown()
        self._open_spend_nano = round(defaults.open_spend_usd * NANO)
        self._failing = False
        """The last admission found the store unreachable (tells the settler when it answers again)."""
        # scopes_of by (key id, UTC day): budget periods start on day boundaries
        self._scopes: Memo[tuple[str, int], tuple[ScopeLimits, ...]] = Memo(10_000)

    def scopes(self, principal: Principal, now: float) -> tuple[ScopeLimits, ...]:
        """``scopes_of``, worked out once per key and day."""
        key = (principal.key_id, int(now // 86400))
        kept = self._scopes.get(key, principal)
        return kept if kept is not None else self._scopes.put(key, principal, scopes_of(principal, now))

    def reserve(
        self, request_id: str, principal: Principal, parsed: ParsedRequest, plan: Plan, now: float
    ) -> Awaitable[Reservation | None]:
        """The reservation when awaited; the estimate is made and the store asked when this is called
        (so the caller can prepare the upstream call during the store's round-trip). The request's
        output bound, if admission adds one, is in ``parsed.body`` once this returns."""
        scopes = self.scopes(principal, now)
        if not scopes:
            return _nothing()
        est = estimate(parsed, plan, self._defaults.estimate_margin, principal.tenant)
        if est.output_bound_added and any(s.budget_nano is not None for s in scopes):
            parsed.body["max_tokens"] = est.output_tokens
        ask = Ask(
            request_id=request_id,
            tenant=principal.tenant,
            scopes=scopes,
            tokens=est.prompt_tokens + est.choices * est.output_tokens,
            cost_nano=est.cost_nano,
            now=now,
            lease_s=max(2 * plan.timeout_s, plan.timeout_s + 10.0),
        )
        return self._reserved(self._store.admit(ask), ask, scopes, est, plan)

    async def _reserved(
        self,
        admitting: Awaitable[Admission],
        ask: Ask,
        scopes: tuple[ScopeLimits, ...],
        est: Estimate,
        plan: Plan,
    ) -> Reservation:
        try:
            admission = await admitting
        except StoreUnavailableError as exc:
            self._failing = True
            log.warning("admission: %s (store_failure: %s)", exc, self._defaults.store_failure)
            sent = not isinstance(exc, StoreUnreachableError)  # else it cannot have run: no release
            if self._defaults.store_failure == "closed":
                if sent:
                    self._release(ask)
                raise StoreUnavailable("The gateway's store is unreachable; try again shortly.") from exc
            return await self._admit_locally(ask, scopes, sent, est, plan)
        except BaseException:  # an error reply, a bug, a cancelled request: it may have run all the same
            self._release(ask)
            raise
        if self._failing:
            self._failing = False
            if self._releases is not None:
                self._releases.store_answered()
        if not admission.admitted:
            raise refusal(admission, scopes, ask, est, plan)
        return Reservation(ask, admission)

    async def _admit_locally(
        self, ask: Ask, scopes: tuple[ScopeLimits, ...], sent: bool, est: Estimate, plan: Plan
    ) -> Reservation:
        """``store_failure: open``: admitted by the fallback store, within ``open_mode``'s bounds. The
        shared store's admission may have run too (``sent``): the settlement (or the release) frees it."""
        local = local_ask(ask, self._open_spend_nano, self._known)
        admission = await self._fallback.admit(local)
        if admission.admitted:
            return Reservation(ask, admission, local)
        if sent:
            self._release(ask)
        if admission.refused_by == "budget" and refused_by_allowance(
            ask, admission.refused_scope, self._open_spend_nano, self._known
        ):
            raise StoreUnavailable(
                "The gateway's store is unreachable and this replica's allowance for serving without "
                "it (open_spend_usd) is spent; try again shortly."
            )
        raise refusal(admission, scopes, ask, est, plan)

    def _release(self, ask: Ask) -> None:
        if self._releases is not None:
            self._releases.release(ask)


async def _nothing() -> None:
    return None


def refusal(
    admission: Admission, scopes: tuple[ScopeLimits, ...], ask: Ask, est: Estimate, plan: Plan
) -> RateLimited | BudgetExceeded:
    who = "tenant" if admission.refused_scope == "t" else "key"
    if admission.refused_by == "budget":
        return budget_refusal(
            who,
            admission.budget_left_nano,
            ask.cost_nano,
            prompt_tokens=est.prompt_tokens,
            output_tokens=est.output_tokens,
            choices=est.choices,
            bound_added=est.output_bound_added,
            candidates=plan.candidates,
        )
    kind = "requests" if admission.refused_by == "rpm" else "tokens"
    err = RateLimited(
        f"Rate limit reached for this {who}: too many {kind} per minute. "
        f"Try again in {admission.retry_after_s:.1f}s.",
        headers=retry_headers(admission.retry_after_s),
    )
    err.headers.update(ratelimit_headers(admission.states, scopes))
    return err


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``12ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def ratelimit_headers(states: tuple[ScopeState, ...], scopes: tuple[ScopeLimits, ...]) -> dict[str, str]:
    """The tightest of the key's and tenant's limits, as OpenAI's x-ratelimit-* headers."""
    by_scope = {s.scope: s for s in states}
    requests: list[tuple[int, int, float]] = []  # (remaining, limit, reset)
    tokens: list[tuple[int, int, float]] = []
    for scope in scopes:
        state = by_scope.get(scope.scope)
        if state is None:
            continue
        if scope.rpm:
            requests.append((max(scope.rpm - state.rpm_used, 0), scope.rpm, state.rpm_reset_s))
        if scope.tpm:
            tokens.append((max(scope.tpm - state.tpm_used, 0), scope.tpm, state.tpm_reset_s))
    headers: dict[str, str] = {}
    for kind, found in (("requests", requests), ("tokens", tokens)):
        if found:
            remaining, limit, reset = min(found)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
    return headers
