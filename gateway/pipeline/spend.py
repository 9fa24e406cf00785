"""Settling money: the actual cost goes to the store and the reservation is released.

Runs after the response is sent (a background task), so it never adds latency. A settlement the
store cannot take right now (Redis down) is queued and written once the store is back, so spend
served under ``store_failure: open`` is not lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

from gateway.context import Exchange
from gateway.metrics import Metrics
from gateway.store.base import NANO, Settlement, Store, StoreUnavailableError

log = logging.getLogger("gateway.spend")


class Settler:
    def __init__(
        self, store: Store, fallback: Store, metrics: Metrics, retry_interval_s: float = 1.0
    ) -> None:
        self._store = store
        self._fallback = fallback
        self._metrics = metrics
        self._pending: deque[Settlement] = deque(maxlen=1_000_000)
        self._retry_interval_s = retry_interval_s

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def settle(self, ex: Exchange) -> None:
        reservation = ex.reservation
        if reservation is None:
            return
        ask = reservation.ask
        usage = ex.usage
        tokens = usage.total_tokens if usage is not None else 0
        settlement = Settlement(
            request_id=ask.request_id,
            tenant=ask.tenant,
            scopes=ask.scopes,
            reserved_tokens=ask.tokens,
            tokens=tokens,
            cost_nano=math.ceil(ex.cost * NANO),
            now=time.time(),
        )
        if reservation.local:
            await self._fallback.settle(settlement)
        try:
            spent = await self._store.settle(settlement)
        except StoreUnavailableError:
            log.warning("store unreachable: settlement of %s queued", ask.request_id)
            self._pending.append(settlement)
            return
        self._observe(settlement, spent)

    def _observe(self, settlement: Settlement, spent: dict[str, int]) -> None:
        for scope in settlement.scopes:
            after = spent.get(scope.scope)
            if after is None or scope.budget_nano is None:
                continue
            over = min(settlement.cost_nano, after - scope.budget_nano)
            metrics = self._metrics
            if over > 0:
                metrics.child(metrics.budget_overrun, settlement.tenant).inc(over / NANO)
            if scope.scope == "t":
                remaining = metrics.child(metrics.budget_remaining, settlement.tenant)
                remaining.set((scope.budget_nano - after) / NANO)

    async def run(self) -> None:
        """Write queued settlements once the store answers again."""
        while True:
            await asyncio.sleep(self._retry_interval_s)
            await self._write_pending()

    async def flush(self) -> None:
        """One last attempt at the queued settlements (graceful shutdown); what is left is logged."""
        await self._write_pending()
        if self._pending:
            log.error("store unreachable at shutdown: %d settlements not written", len(self._pending))

    async def _write_pending(self) -> None:
        # Oldest first, and stop at the first failure: the store is down, the rest would fail too.
        while self._pending:
            settlement = self._pending[0]
            try:
                spent = await self._store.settle(settlement)
            except StoreUnavailableError:
                return
            self._pending.popleft()
            self._observe(settlement, spent)
