"""The queue's contract, the same for the in-memory queue and the Redis one: one item per id, the first
decision wins (also among many at once), waiting wakes on a decision, tenants are apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis_server import RedisServer

from plugins.review.store import MemoryQueue, Queue, RedisQueue


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Queue]:
    made: Queue = MemoryQueue() if request.param == "memory" else RedisQueue(redis_server.url)
    if isinstance(made, RedisQueue):
        await made._redis.flushdb()
    yield made
    await made.aclose()


def item(item_id: str, tenant: str = "acme", **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"id": item_id, "tenant": tenant, "kind": "answer", "created": now, "deadline": now + 60, **extra}


async def test_put_is_once_per_id_and_pending_lists_oldest_first(queue: Queue) -> None:
    await queue.put(item("b", route="r1"), 60)
    await asyncio.sleep(0.01)
    await queue.put(item("c"), 60)
    again = await queue.put(item("b", route="other"), 60)
    assert again.item["route"] == "r1" and again.status == "pending"
    assert [r.item["id"] for r in await queue.pending("acme", 10)] == ["b", "c"]
    assert await queue.depth() == {"acme": 2}


async def test_the_first_decision_wins_among_many_at_once(queue: Queue) -> None:
    await queue.put(item("x"), 60)
    results = await asyncio.gather(
        *(queue.decide("acme", "x", "approved", {"by": f"rev-{n}"}) for n in range(20))
    )
    winners = [record for won, record in results if won]
    assert len(winners) == 1
    by = winners[0].decision["by"]  # type: ignore[index]
    assert all(record is not None and record.decision == {"by": by} for _, record in results)
    assert await queue.pending("acme", 10) == []
    assert await queue.decide("acme", "nope", "approved", {}) == (False, None)


async def test_wait_wakes_on_a_decision_and_times_out_without_one(queue: Queue) -> None:
    await queue.put(item("w"), 60)
    timed_out = await queue.wait("acme", "w", 0.05)
    assert timed_out is not None and timed_out.status == "pending"
    waiter = asyncio.create_task(queue.wait("acme", "w", 10))
    await asyncio.sleep(0.05)
    await queue.decide("acme", "w", "rejected", {"reason": "no"})
    done = await asyncio.wait_for(waiter, 5)
    assert done is not None and (done.status, done.decision) == ("rejected", {"reason": "no"})


async def test_tenants_are_apart(queue: Queue) -> None:
    await queue.put(item("t", tenant="acme"), 60)
    assert await queue.get("globex", "t") is None
    assert await queue.pending("globex", 10) == []
    assert await queue.decide("globex", "t", "approved", {}) == (False, None)
    record = await queue.get("acme", "t")
    assert record is not None and record.status == "pending"


async def test_a_waiter_sees_a_decision_made_by_another_replica(redis_server: RedisServer) -> None:
    one, two = RedisQueue(redis_server.url), RedisQueue(redis_server.url)
    try:
        await one.put(item("r"), 60)
        waiter = asyncio.create_task(one.wait("acme", "r", 10))
        await asyncio.sleep(0.05)
        won, _ = await two.decide("acme", "r", "approved", {"by": "b"})
        assert won
        done = await asyncio.wait_for(waiter, 5)
        assert done is not None and done.status == "approved"
    finally:
        await one.aclose()
        await two.aclose()
