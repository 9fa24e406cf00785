"""The per-replica upstream concurrency cap: the gate alone, then a live gateway shedding with 503."""

from __future__ import annotations

import asyncio
import time

import httpx
from conftest import KEY_ACME, GatewayFactory, sha

from gateway.config.model import Budget
from gateway.pipeline.admit import period_start
from gateway.pipeline.overload import Gate
from gateway.state import GatewayState
from gateway.store.base import NANO, ScopeLimits

# -- the gate -------------------------------------------------------------------------------------------


async def test_takes_slots_up_to_the_limit_then_times_out() -> None:
    gate = Gate(2)
    assert await gate.acquire(0) and await gate.acquire(0)
    assert gate.held == 2
    assert await gate.acquire(0) is False  # no waiting allowed: refused at once
    assert await gate.acquire(0.05) is False  # waited, nothing came free
    assert (gate.held, gate.waiting) == (2, 0)


async def test_release_hands_the_slot_to_the_longest_waiter() -> None:
    gate = Gate(1)
    assert await gate.acquire(0)
    first = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    second = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    gate.release()
    assert await first is True
    assert not second.done() and gate.held == 1
    gate.release()
    assert await second is True
    gate.release()
    assert (gate.held, gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    gate = Gate(1)
    assert await gate.acquire(0)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert (gate.held, gate.waiting) == (1, 0)
    gate.release()
    assert gate.held == 0


async def test_resize_keeps_holders_and_lets_waiters_in_when_it_grows() -> None:
    gate = Gate(2)
    assert await gate.acquire(0) and await gate.acquire(0)
    gate.resize(1)  # shrink below the holders: nobody is dropped, newcomers wait
    assert gate.held == 2 and await gate.acquire(0) is False
    gate.release()
    assert await gate.acquire(0) is False  # still at the new cap of 1
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    gate.resize(2)
    assert await waiter is True and gate.held == 2
    gate.resize(None)  # no cap: everyone gets in at once, still counted
    assert await gate.acquire(0) and gate.held == 3


# -- through a live gateway -----------------------------------------------------------------------------

LATENCY_S = 0.5
QUEUE_S = 0.2

ROUTES = f"""
providers:
  slow: {{type: mock, latency_ms: {int(LATENCY_S * 1000)}}}
models:
  mock-chat: {{provider: slow, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes: []
defaults: {{max_concurrent_upstream: 2, queue_timeout_s: {QUEUE_S}}}
"""

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 10, period: total}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""


async def test_sheds_with_503_and_retry_after_once_the_queue_wait_runs_out(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(routes=ROUTES, budgets=BUDGETS)
    state: GatewayState = gw.app.state.gateway  # type: ignore[attr-defined]

    async def one(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
        body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        if i % 2:
            body["stream"] = True  # streams take a slot as well
        started = time.monotonic()
        response = await client.post("/v1/chat/completions", json=body)
        return response, time.monotonic() - started

    headers = {"authorization": f"Bearer {KEY_ACME}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(8)))

    statuses = sorted(r.status_code for r, _ in results)
    assert statuses == [200] * 2 + [503] * 6
    for response, _ in results:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert response.json()["error"]["type"] == "server_error"
            assert response.headers["retry-after"] == "1"
    # Bounded latency is the point: nobody waits for a slot longer than the queue timeout.
    assert max(elapsed for _, elapsed in results) < LATENCY_S + QUEUE_S + 2.0

    # Every slot came back and every reservation (the shed ones too) was released by its settlement.
    budget = Budget(usd=10, period="total")
    scope = ScopeLimits("t", budget_nano=10 * NANO, period_start=period_start(budget, time.time()))
    async with asyncio.timeout(10):
        # Settlements run in the gateway's background: nothing here to wait on but the store itself.
        while (await state.store.spend("acme", scope)).reserved_nano or state.shared.gate.held:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert state.shared.gate.held == 0
    async with httpx.AsyncClient(base_url=gw.url) as client:
        lines = (await client.get("/metrics")).text.splitlines()
    shed = [float(x.split()[-1]) for x in lines if x.startswith("gateway_requests_total") and '"503"' in x]
    assert sum(shed) == 6
