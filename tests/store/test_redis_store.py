"""RedisStore beyond the shared contract: its key layout and TTLs, several replicas on one Redis, and
agreement with MemoryStore on a random workload."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
import redis.asyncio as aredis
from test_contract import DAY, T0, ask, settle_of, state

from gateway.store.base import DONE_TTL_S, Ask, ScopeLimits
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

pytestmark = pytest.mark.redis


async def test_replicas_sharing_redis_never_pass_the_budget(clean_redis: str) -> None:
    replicas = [RedisStore(clean_redis, timeout_s=2.0) for _ in range(4)]
    try:
        t = ScopeLimits("t", budget_nano=37 * 1_000)
        calls = [replicas[i % 4].admit(ask(t, cost=1_000)) for i in range(200)]
        results = await asyncio.gather(*calls)
        assert sum(r.admitted for r in results) == 37
    finally:
        for replica in replicas:
            await replica.close()


async def test_an_admission_is_on_its_way_before_it_is_awaited(clean_redis: str) -> None:
    """admit() writes the script call at once; awaiting only collects the answer. The proxy relies on
    it to prepare the upstream call while the admission's round-trip is under way."""
    store, other = RedisStore(clean_redis, timeout_s=2.0), RedisStore(clean_redis, timeout_s=2.0)
    t = ScopeLimits("t", budget_nano=10_000)
    try:
        assert (await store.admit(ask(t, cost=1_000, now=T0))).admitted  # connected, nothing awaited
        pending = store.admit(ask(t, cost=2_000, now=T0))
        reserved = 0
        for _ in range(200):  # nobody awaits ``pending``: Redis runs it all the same
            reserved = (await other.spend("acme", t, now=T0)).reserved_nano
            if reserved == 3_000:
                break
            await asyncio.sleep(0.005)
        assert reserved == 3_000
        assert (await pending).admitted
    finally:
        await store.close()
        await other.close()


async def test_every_redis_key_is_hash_tagged_and_expires(clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    client = aredis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        t = ScopeLimits("t", rpm=10, tpm=1000, budget_nano=10**6, period_start=int(T0) - int(T0) % DAY)
        k = ScopeLimits("k:one", rpm=5, budget_nano=10**5)
        total = ScopeLimits("k:two", budget_nano=10**5)
        a = ask(t, k, total, tokens=100, cost=50, lease_s=30.0)
        await store.admit(a)
        await store.admit(ask(t, k, total, tokens=100, cost=50, lease_s=300.0))
        await store.admit(ask(t, k, total, tokens=100, cost=50, lease_s=30.0))  # must not shorten the TTL
        await store.settle(settle_of(a, tokens=50, cost=40))
        keys = sorted(await client.keys("*"))
        assert keys == [
            f"gw:{{acme}}:done:{a.request_id}",
            "gw:{acme}:lease",
            "gw:{acme}:res",
            "gw:{acme}:rpm:k:one",
            "gw:{acme}:rpm:t",
            "gw:{acme}:spent:k:one:0",
            "gw:{acme}:spent:k:two:0",
            f"gw:{{acme}}:spent:t:{t.period_start}",
            "gw:{acme}:tpm:t",
        ]
        ttls = {key: await client.ttl(key) for key in keys}
        assert ttls["gw:{acme}:lease"] == ttls["gw:{acme}:res"] == 420  # lease 300 + 60, + 60 to spare
        assert ttls["gw:{acme}:rpm:t"] == ttls["gw:{acme}:tpm:t"] == 120
        assert ttls[f"gw:{{acme}}:done:{a.request_id}"] == DONE_TTL_S  # the settled marker: a day
        assert ttls["gw:{acme}:spent:k:two:0"] == -1  # a ``total`` budget's spend is kept
        # a period's spend is kept until 32 days after the period starts, on the caller's clock
        assert ttls[f"gw:{{acme}}:spent:t:{t.period_start}"] == t.period_start + 32 * DAY - int(T0)
    finally:
        await client.aclose()
        await store.close()


async def test_memory_and_redis_agree_on_a_random_workload(clean_redis: str) -> None:
    rng = random.Random(20240601)
    memory, shared = MemoryStore(), RedisStore(clean_redis, timeout_s=2.0)

    def scopes(now: float) -> tuple[ScopeLimits, ...]:
        period = int(now) - int(now) % 120  # short periods, so budgets fill up and start over
        return (
            ScopeLimits("t", rpm=40, tpm=3_000, budget_nano=40_000, period_start=period),
            ScopeLimits("k:a", rpm=15, budget_nano=12_000, period_start=period),
            ScopeLimits("k:b", tpm=1_000),
            ScopeLimits("k:c"),
        )

    now, outcomes = T0, Counter[str | None]()
    open_asks: list[Ask] = []
    try:
        for step in range(1_500):
            now += rng.choice((0.0, 0.0, 0.125, 0.5, 1.0, 3.0, 61.0 if step % 200 == 0 else 0.25))
            if open_asks and rng.random() < 0.45:
                a = open_asks.pop(rng.randrange(len(open_asks)))
                st = settle_of(
                    a, tokens=rng.randint(0, 2 * a.tokens), cost=rng.randint(0, a.cost_nano), now=now
                )
                assert await memory.settle(st) == await shared.settle(st), step
                continue
            tenant, *keys = scopes(now)
            a = ask(tenant, rng.choice(keys), now=now, tokens=rng.randint(0, 150), cost=rng.randint(0, 3_000))
            a = Ask(a.request_id, a.tenant, a.scopes, a.tokens, a.cost_nano, a.now, rng.choice((2.0, 30.0)))
            expected, got = await memory.admit(a), await shared.admit(a)
            assert expected == got, step
            outcomes[got.refused_by] += 1
            if got.admitted and rng.random() < 0.9:  # the rest are abandoned: their leases expire
                open_asks.append(a)
        for scope in scopes(now):
            assert await memory.spend("acme", scope, now=now) == await shared.spend("acme", scope, now=now)
        # the workload really exercises every outcome
        assert all(outcomes[kind] >= 30 for kind in (None, "rpm", "tpm", "budget")), outcomes
    finally:
        await shared.close()


async def test_a_drifted_window_sum_is_repaired(clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    client = aredis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        t = ScopeLimits("t", rpm=100)
        await store.admit(ask(t, now=T0))
        await store.admit(ask(t, now=T0 + 30))
        await client.hset("gw:{acme}:rpm:t", "n", 99)  # whatever went wrong, it does not last
        assert state(await store.admit(ask(t, now=T0 + 60))) == (2, 0)  # bucket T0 left: rescanned
    finally:
        await client.aclose()
        await store.close()
