"""Settling money: the actual cost goes to the store and the reservation is released, exactly once.

Runs after the response is sent (a background task), so it never adds latency. Both store operations
are idempotent by request id (``gateway/store/base.py``), so the rule here is simple: a settlement
is sent until one copy of it is acknowledged, and a copy that ran twice counts once.

* The first copy is sent at once. If the store does not acknowledge it (unreachable, the reply lost
  past the deadline), it joins the queue.
* While the queue is not empty the store is in trouble: new settlements join the queue rather than
  being sent, and one sender (``run``) drains it, oldest first, up to ``BATCH`` at a time, one copy of
  each in flight. After a failed batch it waits ``RETRY_INITIAL_S``, doubling up to ``RETRY_MAX_S``,
  or less when an admission reaches the store again (``store_answered``). So a stall of S seconds
  costs at most about S / RETRY_MAX_S + 5 re-sent batches, each on the store client's one connection,
  not a new connection per settlement per second.
* Releases (``release``): an admission that failed (a 503 under the closed policy, a local refusal
  under ``open``, any error) may have run, or may run later: its request id is released through the
  same queue, so its reservation never waits for its lease.
* The queue holds at most ``MAX_PENDING`` settlements (about 200 bytes each). Past that, and for an
  error that is not the store being unavailable, a settlement is dropped and logged at ERROR with its
  request id, tenant and cost: the only ways a cost is not recorded, and never silent.
* Values: a cost that is not a finite number >= 0, or more than ``MAX_COST_NANO``, is logged and
  recorded as 0 or the maximum; token counts likewise. Settling never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import replace
from decimal import Decimal

from gateway.context import Exchange
from gateway.metrics import Metrics
from gateway.pipeline.open_mode import LastKnown
from gateway.store.base import NANO, Ask, Settlement, Store, StoreUnavailableError

log = logging.getLogger("gateway.spend")

MAX_PENDING = 200_000
"""Settlements kept while the store is unreachable (about 40 MB); past it they are dropped, logged."""
BATCH = 256
"""Queued settlements sent together (pipelined on one connection) when draining."""
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 5.0
MAX_COST_NANO = 2**53 - 1
"""The largest cost the store adds exactly (Lua numbers are doubles): about 9 million USD."""
MAX_TOKENS = 2**40


class Settler:
    def __init__(
        self,
        store: Store,
        fallback: Store,
        metrics: Metrics,
        known: LastKnown | None = None,
        *,
        max_pending: int = MAX_PENDING,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._store = store
        self._fallback = fallback
        self._metrics = metrics
        self.known = known or LastKnown()
        self._pending: deque[Settlement] = deque()
        self._max_pending = max_pending
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queued = asyncio.Event()
        self._answered = asyncio.Event()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def settle(self, ex: Exchange) -> None:
        """The request's settlement: sent now, or queued; never raises."""
        reservation = ex.reservation
        if reservation is None:
            return
        try:
            settlement = self._settlement(ex, reservation.ask)
            if reservation.local is not None:
                await self._settle_locally(replace(settlement, scopes=reservation.local.scopes))
            await self._send(settlement)
        except Exception:
            log.exception("settlement of %s failed; the reservation is left to its lease", ex.request_id)

    def release(self, ask: Ask) -> None:
        """Free ``ask``'s reservation by request id (see the module docstring); queued, never sent here:
        the admission just failed, so the store is in trouble."""
        self._enqueue(Settlement.release(ask, time.time()))

    def store_answered(self) -> None:
        """An admission reached the store after some did not: drain the queue now."""
        if self._pending:
            self._answered.set()

    def _settlement(self, ex: Exchange, ask: Ask) -> Settlement:
        usage = ex.usage
        tokens = _tokens(usage.total_tokens if usage is not None else 0, ask.request_id)
        return Settlement(
            request_id=ask.request_id,
            tenant=ask.tenant,
            scopes=ask.scopes,
            reserved_tokens=ask.tokens,
            tokens=tokens,
            cost_nano=cost_nano(ex.cost, ask.request_id),
            now=time.time(),
        )

    async def _settle_locally(self, settlement: Settlement) -> None:
        """``store_failure: open``: the fallback store's own count (``open_mode``)."""
        try:
            await self._fallback.settle(settlement)
        except Exception:
            log.exception("local settlement of %s failed", settlement.request_id)

    async def _send(self, settlement: Settlement) -> None:
        if self._pending:  # the store is in trouble: wait in line, one sender drains the queue
            self._enqueue(settlement)
            return
        try:
            spent = await self._store.settle(settlement)
        except StoreUnavailableError as exc:
            log.warning("settlement of %s not acknowledged (%s): queued", settlement.request_id, exc)
            self._enqueue(settlement)
            return
        except Exception as exc:
            self._lost(settlement, exc)
            return
        self._observe(settlement, spent)

    def _enqueue(self, settlement: Settlement) -> None:
        if len(self._pending) >= self._max_pending:
            self._lost(settlement, OverflowError(f"{self._max_pending} settlements already queued"))
            return
        self._pending.append(settlement)
        self._queued.set()

    def _lost(self, settlement: Settlement, exc: BaseException) -> None:
        log.error(
            "settlement of %s dropped (%r): tenant %s, cost %s USD not recorded",
            settlement.request_id,
            exc,
            settlement.tenant,
            Decimal(settlement.cost_nano) / NANO,
        )

    def _observe(self, settlement: Settlement, spent: dict[str, int]) -> None:
        for scope in settlement.scopes:
            after = spent.get(scope.scope)
            if after is None or scope.budget_nano is None:
                continue
            self.known.note(settlement.tenant, scope, after)
            over = min(settlement.cost_nano, after - scope.budget_nano)
            metrics = self._metrics
            if over > 0:
                metrics.child(metrics.budget_overrun, settlement.tenant).inc(over / NANO)
            if scope.scope == "t":
                remaining = metrics.child(metrics.budget_remaining, settlement.tenant)
                remaining.set((scope.budget_nano - after) / NANO)

    async def run(self) -> None:
        """Drain the queue whenever it holds something, backing off while the store fails."""
        delay = self._retry_initial_s
        while True:
            if not self._pending:
                delay = self._retry_initial_s
                self._queued.clear()
                await self._queued.wait()
            # a moment first: the store just failed; an admission that gets through cuts it short
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._answered.wait()
            try:
                drained = await self._drain()
            except Exception:  # a bug must not stop the only sender; what failed stays queued
                log.exception("draining the settlement queue failed")
                drained = False
            delay = self._retry_initial_s if drained else min(2 * delay, self._retry_max_s)

    async def flush(self) -> None:
        """One last attempt at the queued settlements (graceful shutdown); what is left is logged."""
        await self._drain()
        if self._pending:
            usd = Decimal(sum(s.cost_nano for s in self._pending)) / NANO
            log.error(
                "store unreachable at shutdown: %d settlements (%s USD) not written", len(self._pending), usd
            )

    async def _drain(self) -> bool:
        """Send the queue, oldest first; False at the first batch the store did not take."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            try:
                results = await asyncio.gather(
                    *(self._store.settle(s) for s in batch), return_exceptions=True
                )
            except BaseException:  # cancelled (shutdown): back in line, a copy that ran counts once
                self._pending.extendleft(reversed(batch))
                raise
            # from here on nothing awaits: the batch is sorted out before anything else runs
            failed = []
            for settlement, result in zip(batch, results, strict=True):
                if isinstance(result, StoreUnavailableError):
                    failed.append(settlement)
                elif isinstance(result, BaseException):
                    self._lost(settlement, result)
                else:
                    self._observe(settlement, result)
            if failed:
                self._pending.extendleft(reversed(failed))
                log.warning("store unreachable: %d settlements wait to be re-sent", len(self._pending))
                return False
        return True


def cost_nano(cost: Decimal, request_id: str) -> int:
    try:
        nano = math.ceil(cost * NANO)
    except (ArithmeticError, ValueError, TypeError) as exc:  # NaN, infinity, not a number
        log.error("settlement of %s: cost %r is not a number (%r); recorded as 0", request_id, cost, exc)
        return 0
    if nano < 0:
        log.error("settlement of %s: negative cost %s recorded as 0", request_id, cost)
        return 0
    if nano > MAX_COST_NANO:
        log.error("settlement of %s: cost %s USD recorded as %s", request_id, cost, MAX_COST_NANO / NANO)
        return MAX_COST_NANO
    return nano


def _tokens(tokens: object, request_id: str) -> int:
    if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens <= MAX_TOKENS:
        return tokens
    log.error("settlement of %s: token count %r recorded as 0", request_id, tokens)
    return 0
