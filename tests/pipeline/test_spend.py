"""The settler: a settlement is re-sent until acknowledged and counted once; it never raises on a value;
its queue is bounded and every drop is logged. Real stores: MemoryStore, and a real redis-server
stopped and restarted, or a port nothing listens on."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from decimal import Decimal

import pytest
from redis_server import RedisServer

from gateway.config.model import Defaults, ModelConfig, RetryPolicy
from gateway.context import Exchange
from gateway.errors import BudgetExceeded, StoreUnavailable
from gateway.metrics import Metrics
from gateway.pipeline.admit import Admitter, Estimate, Reservation
from gateway.pipeline.open_mode import LastKnown, local_ask
from gateway.pipeline.route import Plan
from gateway.pipeline.spend import Settler
from gateway.providers.base import Usage
from gateway.store.base import NANO, Admission, AlreadySettledError, Ask, ScopeLimits
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

SCOPE = ScopeLimits("t", budget_nano=10 * NANO)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exchange(cost: Decimal, request_id: str, tokens: int = 30) -> Exchange:
    ex = Exchange(request_id=request_id)
    ask = Ask(request_id, "acme", (SCOPE,), tokens=100, cost_nano=NANO, now=time.time(), lease_s=60)
    ex.reservation = Reservation(ask, Admission(admitted=True))
    ex.usage = Usage(prompt_tokens=tokens, completion_tokens=0)
    ex.cost = cost
    return ex


@pytest.mark.parametrize(
    ("cost", "recorded"),
    [
        (Decimal("NaN"), 0),
        (Decimal("sNaN"), 0),
        (Decimal("Infinity"), 0),
        (Decimal("-0.5"), 0),
        (Decimal("1e30"), 2**53 - 1),
        (Decimal("0.0000001234"), 124),
    ],
)
async def test_settling_never_raises_and_logs_a_value_it_cannot_count(
    cost: Decimal, recorded: int, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    ex = exchange(cost, "req-odd")
    await store.admit(ex.reservation.ask)  # type: ignore[union-attr]
    settler = Settler(store, MemoryStore(), Metrics())
    with caplog.at_level(logging.ERROR, "gateway.spend"):
        await settler.settle(ex)
    spend = await store.spend("acme", SCOPE)
    assert (spend.spent_nano, spend.reserved_nano) == (recorded, 0)  # released whatever the value
    assert bool(caplog.records) == (recorded != 124)


async def test_a_full_queue_drops_loudly(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.25)
    settler = Settler(store, MemoryStore(), Metrics(), max_pending=3)
    try:
        with caplog.at_level(logging.WARNING, "gateway.spend"):
            for i in range(5):
                await settler.settle(exchange(Decimal("0.25"), f"req-{i}"))
        assert settler.pending == 3
        dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(dropped) == 2
        assert all("tenant acme, cost 0.25 USD not recorded" in m for m in dropped)
    finally:
        await store.close()


async def test_settlements_are_re_sent_until_acknowledged_and_count_once() -> None:
    server = RedisServer().start()
    store = RedisStore(server.url, timeout_s=0.25)
    settler = Settler(store, MemoryStore(), Metrics(), retry_initial_s=0.05, retry_max_s=0.2)
    runner = asyncio.create_task(settler.run())
    try:
        first = exchange(Decimal("1"), "req-first")
        await settler.settle(first)  # acknowledged at once
        server.stop()
        for i in range(3):
            await settler.settle(exchange(Decimal("0.5"), f"req-{i}"))
        # an admission that failed: released through the same queue
        settler.release(Ask("req-refused", "acme", (SCOPE,), 10, 7 * NANO, time.time(), 60))
        assert settler.pending == 4
        await asyncio.sleep(0.5)  # several failed tries meanwhile: nothing lost, nothing doubled
        server.start()  # empty: only what the settler writes from now on will be there
        for _ in range(200):
            if settler.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert settler.pending == 0
        # every queued settlement once; sending them all again (a lost reply) changes nothing
        assert (await store.spend("acme", SCOPE)).spent_nano == 3 * NANO // 2
        for i in range(3):
            await settler.settle(exchange(Decimal("0.5"), f"req-{i}"))
        assert (await store.spend("acme", SCOPE)).spent_nano == 3 * NANO // 2
        # the release left its marker: the admission, if it arrives now, records nothing
        late = Ask("req-refused", "acme", (SCOPE,), 10, 7 * NANO, time.time(), 60)
        with pytest.raises(AlreadySettledError):
            await store.admit(late)
        assert (await store.spend("acme", SCOPE)).reserved_nano == 0
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
        server.stop()


# -- store_failure: open, bounded ---------------------------------------------------------------------


def test_the_local_budget_is_the_allowance_or_what_was_left() -> None:
    known = LastKnown()
    tenant = ScopeLimits("t", rpm=5, budget_nano=10 * NANO, period_start=100)
    key = ScopeLimits("k:a", rpm=2)
    ask = Ask("r", "acme", (tenant, key), 1, 1, 0.0, 60)
    assert [s.budget_nano for s in local_ask(ask, NANO, known).scopes] == [NANO, None]  # nothing known
    known.note("acme", tenant, 9_800_000_000)
    local = local_ask(ask, NANO, known).scopes
    assert [(s.budget_nano, s.rpm) for s in local] == [(200_000_000, 5), (None, 2)]  # 0.2 left
    # a total from an earlier period is not this period's
    known.note("acme", ScopeLimits("t", budget_nano=10 * NANO, period_start=50), 10 * NANO)
    assert local_ask(ask, NANO, known).scopes[0].budget_nano == 200_000_000
    later = ScopeLimits("t", budget_nano=10 * NANO, period_start=200)
    assert local_ask(Ask("r", "acme", (later,), 1, 1, 0.0, 60), NANO, known).scopes[0].budget_nano == NANO


async def test_open_mode_serves_up_to_the_allowance_then_503_or_429() -> None:
    """Redis unreachable (nothing listens): the fallback admits within open_spend_usd (503 past it),
    and within what the store last said was left (429, as with the store up)."""
    down = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.25)
    known = LastKnown()
    admitter = Admitter(down, MemoryStore(), Defaults(store_failure="open", open_spend_usd=0.5), known=known)
    try:
        tenant = (ScopeLimits("t", budget_nano=10 * NANO),)
        # what the reservation was worked out from: the refusal's message is made from it
        est = Estimate(1, 0, 300_000_000, False)
        plan = Plan("r", (ModelConfig("m", "p", "m"),), 30.0, RetryPolicy(), None, None)
        ask = Ask("r1", "acme", tenant, 1, 300_000_000, time.time(), 60)
        first = await admitter._reserved(down.admit(ask), ask, tenant, est, plan)
        assert first.local is not None and first.local.scopes[0].budget_nano == NANO // 2
        second = Ask("r2", "acme", tenant, 1, 300_000_000, time.time(), 60)
        with pytest.raises(StoreUnavailable, match="open_spend_usd"):  # 0.3 + 0.3 > 0.5
            await admitter._reserved(down.admit(second), second, tenant, est, plan)
        known.note("other", tenant[0], 9_900_000_000)  # 0.1 left, as last reported
        third = Ask("r3", "other", tenant, 1, 300_000_000, time.time(), 60)
        with pytest.raises(BudgetExceeded):
            await admitter._reserved(down.admit(third), third, tenant, est, plan)
    finally:
        await down.close()
